#!/usr/bin/env ruby
# frozen_string_literal: true

# Runs the diamond workflow and a retrying step through libtasker with
# Fiddle, prints both tasks as JSON and exits non-zero if the outcome is wrong.
#
#   TASKER_LIB_DIR=<prefix>/lib ruby examples/ruby/diamond.rb

require_relative 'lib/tasker_demo'

puts "libtasker #{Tasker.version} (ABI #{Tasker.abi_version}), binding written for ABI #{Tasker::BINDING_ABI}"
# A binding built against an older ABI must be refused with a clear message.
begin
  Tasker.check_abi(0)
  abort 'WRONG: tasker_abi_check(0) succeeded, want TASKER_EVERSION'
rescue Tasker::Error => e
  abort "WRONG: tasker_abi_check(0) raised #{e.name}, want TASKER_EVERSION" unless e.code == Tasker::EVERSION
  puts "ABI 0 refused as expected: #{e.message}"
end

outcome = TaskerDemo.run
puts 'diamond task:', JSON.pretty_generate(JSON.parse(outcome.diamond))
puts 'flaky task:', JSON.pretty_generate(JSON.parse(outcome.flaky))
problems = TaskerDemo.check(outcome)
problems.each { |p| warn "WRONG: #{p}" }
exit 1 unless problems.empty?
puts 'ruby example: OK (diamond join = 25, deferred completions = 2, flaky succeeded on attempt 2)'
