# frozen_string_literal: true

# The example workflows, shared by diamond.rb and the tests.
#
# diamond: start -> (left, right) -> join with start = context.n,
# left = 2 * start, right = 3 * start, join = left + right (25 for n = 5).
# left and right are completed by other Ruby threads after their handler
# returned (deferred completion).
# flaky: one step that fails retryably on attempt 1 and succeeds on attempt 2.

require_relative 'tasker'

module TaskerDemo
  DIAMOND = {
    namespace: 'examples', name: 'diamond', version: '1',
    steps: [
      { name: 'start' },
      { name: 'left', handler: 'double', depends_on: ['start'] },
      { name: 'right', handler: 'triple', depends_on: ['start'] },
      { name: 'join', depends_on: %w[left right] }
    ]
  }.freeze

  FLAKY = {
    namespace: 'examples', name: 'flaky', version: '1',
    steps: [{ name: 'flaky', retry: { max_attempts: 3, backoff: 'none' } }]
  }.freeze

  Outcome = Struct.new(:diamond, :flaky, :deferred_after_return, :deferred_errors, keyword_init: true)

  def self.run
    deferred = Queue.new # results of the deferred threads
    threads = []
    Tasker::Coordinator.open do |coord|
      coord.handle('start') do |step|
        n = step.context['n']
        raise Tasker::Failure.new('context needs an integer n', error_class: 'BadInput', retryable: false) unless n.is_a?(Integer)

        step.succeed(n)
      end

      { 'double' => 2, 'triple' => 3 }.each do |handler, factor|
        coord.handle(handler) do |step|
          returned = Queue.new
          threads << Thread.new do
            returned.pop # until the handler has returned
            step.succeed(step.dependency_result('start') * factor)
            deferred << :ok
          rescue StandardError => e
            deferred << e
          end
          returned << true # ...which is right after this line
        end
      end

      coord.handle('join') do |step|
        step.succeed(step.dependency_result('left') + step.dependency_result('right'))
      end

      coord.handle('flaky') do |step|
        if step.attempt == 1
          raise Tasker::Failure.new('the first attempt fails on purpose', error_class: 'TransientError', retryable: true)
        end

        step.succeed(step.attempt)
      end

      coord.register_template(DIAMOND)
      coord.register_template(FLAKY)
      diamond = coord.create_task('examples', 'diamond', context: { n: 5 })
      flaky = coord.create_task('examples', 'flaky')
      coord.run(diamond, flaky, timeout: 10)
      threads.each(&:join)
      results = Array.new(deferred.size) { deferred.pop }
      Outcome.new(diamond: coord.task_json(diamond), flaky: coord.task_json(flaky),
                  deferred_after_return: results.count(:ok),
                  deferred_errors: results.reject { |r| r == :ok })
    end
  end

  # Every way the outcome differs from what the workflows must produce.
  def self.check(outcome)
    bad = []
    diamond = JSON.parse(outcome.diamond)
    flaky = JSON.parse(outcome.flaky)

    bad << "diamond: state #{diamond['state']}, want complete" unless diamond['state'] == 'complete'
    want = { 'start' => 5, 'left' => 10, 'right' => 15, 'join' => 25 }
    steps = diamond['steps'] || []
    bad << "diamond: #{steps.size} steps, want 4" unless steps.size == 4
    want.each do |name, value|
      s = steps.find { |x| x['name'] == name }
      if s.nil?
        bad << "diamond: no step #{name}"
        next
      end
      bad << "diamond: #{name} is #{s['state']} after #{s['attempts']} attempts" unless s['state'] == 'complete' && s['attempts'] == 1
      bad << "diamond: #{name} result #{s['result'].inspect}, want #{value}" unless s['result'] == value
    end
    bad << "deferred: #{outcome.deferred_after_return} thread completions, want 2" unless outcome.deferred_after_return == 2
    outcome.deferred_errors.each { |e| bad << "deferred completion error: #{e.message}" }

    bad << "flaky: state #{flaky['state']}, want complete" unless flaky['state'] == 'complete'
    fsteps = flaky['steps'] || []
    if fsteps.size == 1
      s = fsteps[0]
      bad << "flaky: #{s['state']} after #{s['attempts']} attempts, want complete after 2" unless s['state'] == 'complete' && s['attempts'] == 2
      bad << "flaky: result #{s['result'].inspect}, want 2" unless s['result'] == 2
      errs = s['errors'] || []
      unless errs.size == 1 && errs[0]['class'] == 'TransientError' && errs[0]['retryable'] == true
        bad << "flaky: errors #{errs.inspect}, want one retryable TransientError"
      end
    else
      bad << "flaky: #{fsteps.size} steps, want 1"
    end
    bad
  end
end
