# frozen_string_literal: true

# Tests of the Fiddle binding against the real libtasker:
#   TASKER_LIB_DIR=<prefix>/lib ruby examples/ruby/test/test_tasker.rb

require 'minitest/autorun'
require_relative '../lib/tasker_demo'

class TestTasker < Minitest::Test
  def test_diamond_retry_and_deferred_completion
    outcome = TaskerDemo.run
    problems = TaskerDemo.check(outcome)
    assert_empty problems, "diamond: #{outcome.diamond}\nflaky: #{outcome.flaky}"
  end

  # A binding built against an older ABI gets EVERSION and a message naming both numbers.
  def test_abi_check_refuses_an_older_binding
    Tasker.check_abi(Tasker::BINDING_ABI)
    err = assert_raises(Tasker::Error) { Tasker.check_abi(0) }
    assert_equal Tasker::EVERSION, err.code
    lib = Tasker.abi_version.to_s
    assert_includes err.message, lib
    assert_includes err.message, '0'
  end

  def test_errors_are_structured
    Tasker::Coordinator.open do |coord|
      err = assert_raises(Tasker::Error) do
        coord.register_template(namespace: 't', name: 'cyclic',
                                steps: [{ name: 'a', depends_on: ['b'] }, { name: 'b', depends_on: ['a'] }])
      end
      assert_equal Tasker::ETEMPLATE, err.code
      assert_equal 'cycle', err.details['reason']

      coord.handle('h') { |s| s.succeed }
      assert_equal Tasker::EEXIST, assert_raises(Tasker::Error) { coord.handle('h') { |s| s.succeed } }.code
    end
    err = assert_raises(Tasker::Error) { Tasker::Coordinator.new('no.such.key' => '1') }
    assert_equal Tasker::ECONFIG, err.code
  end

  def test_closed_coordinator_refuses_calls
    coord = Tasker::Coordinator.new
    coord.close
    coord.close # twice is a no-op
    assert_equal Tasker::ECLOSED, assert_raises(Tasker::Error) { coord.create_task('a', 'b') }.code
  end
end
