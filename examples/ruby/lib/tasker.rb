# frozen_string_literal: true

# A small Ruby binding for libtasker with Fiddle (standard library only).
#
# The library is found through TASKER_LIB (a path to libtasker.so.0),
# TASKER_LIB_DIR (a directory holding it), or the dynamic loader's search path
# (LD_LIBRARY_PATH, ldconfig).
#
# Ruby code must not run on threads that Ruby did not create, so this binding
# never lets tasker's C worker threads call into Ruby.  Handlers are
# registered in poll mode (no C callback) and Coordinator#run claims ready
# steps through tasker_coordinator_fd + tasker_coordinator_claim on the
# calling Ruby thread.  A handler may complete its step before returning or
# hand it to another Ruby thread that completes it later (deferred
# completion).  See docs/languages.md.

require 'fiddle'
require 'fiddle/import'
require 'json'

module Tasker
  # The ABI number of the tasker.h these declarations were written from.
  BINDING_ABI = 1

  OK = 0
  EINVAL = -1
  ENOTFOUND = -3
  EEXIST = -4
  ESTATE = -5
  ETEMPLATE = -6
  ETIMEOUT = -7
  ECLOSED = -8
  EVERSION = -10
  ECONFIG = -12

  TASK_STATES = %w[pending running complete error cancelled resolved_manually].freeze

  # The raw C API.
  module C
    extend Fiddle::Importer

    def self.library_path
      return ENV['TASKER_LIB'] if ENV['TASKER_LIB'] && !ENV['TASKER_LIB'].empty?
      return File.join(ENV['TASKER_LIB_DIR'], 'libtasker.so.0') if ENV['TASKER_LIB_DIR'] && !ENV['TASKER_LIB_DIR'].empty?

      'libtasker.so.0' # the SONAME: what a runtime-only install provides
    end

    dlload library_path

    TASK_REQUEST_VERSION = 1
    FAILURE_VERSION = 1
    UUID_BUFSIZE = 37

    Error = struct(['unsigned int version', 'int code', 'int category',
                    'char *message', 'char *context_json'])
    TaskRequest = struct(['unsigned int version', 'char *ns', 'char *name',
                          'char *template_version', 'char *context_json',
                          'size_t context_len', 'char *idempotency_key', 'int32_t priority'])
    Failure = struct(['unsigned int version', 'char *error_class', 'char *message',
                      'int retryable', 'int64_t retry_after_ms', 'char *context_json'])

    extern 'const char *tasker_version(void)'
    extern 'int tasker_abi_version(void)'
    extern 'int tasker_abi_check(int)'
    extern 'const char *tasker_strerror(int)'
    extern 'const char *tasker_error_category_name(int)'
    extern 'void *tasker_error_last(void)'
    extern 'void tasker_free(void *)'
    extern 'const char *tasker_task_state_name(int)'

    extern 'int tasker_config_new(void *)'
    extern 'void tasker_config_free(void *)'
    extern 'int tasker_config_set(void *, const char *, const char *)'

    extern 'int tasker_coordinator_open(void *, void *)'
    extern 'int tasker_coordinator_close(void *)'
    extern 'int tasker_coordinator_fd(void *, void *)'
    extern 'int tasker_coordinator_claim(void *, void *, void *, size_t)'
    extern 'int tasker_handler_register(void *, const char *, void *, void *, void *)'
    extern 'int tasker_template_register_json(void *, const char *, size_t)'

    extern 'int tasker_task_request_init(void *, unsigned int)'
    extern 'int tasker_task_create(void *, void *, void *)'
    extern 'int tasker_task_wait(void *, void *, const char *, int)'
    extern 'int tasker_task_get(void *, void *, const char *)'

    extern 'const char *tasker_step_name(void *)'
    extern 'const char *tasker_step_handler_name(void *)'
    extern 'const char *tasker_step_task_uuid(void *)'
    extern 'uint32_t tasker_step_attempt(void *)'
    extern 'const char *tasker_step_context(void *, void *)'
    extern 'int tasker_step_dependency_result(void *, void *, void *, const char *)'
    extern 'int tasker_step_succeed(void *, const char *, size_t)'
    extern 'int tasker_failure_init(void *, unsigned int)'
    extern 'int tasker_step_fail(void *, void *)'
  end

  # A failed tasker call: the status code and the thread's structured last error.
  class Error < StandardError
    attr_reader :code, :name, :category, :context

    def initialize(code, name, category, message, context)
      @code = code
      @name = name
      @category = category
      @context = context
      super(context && context != '{}' ? "#{name}: #{message} #{context}" : "#{name}: #{message}")
    end

    # The error's context JSON as a Hash.
    def details
      JSON.parse(@context || '{}')
    end
  end

  # Raise from a handler (or pass to Step#fail) to fail an attempt with a class,
  # a retry decision and an optional delay.
  class Failure < StandardError
    attr_reader :error_class, :retryable, :retry_after_ms, :context

    def initialize(message = '', error_class: 'Error', retryable: true, retry_after_ms: nil, context: nil)
      super(message)
      @error_class = error_class
      @retryable = retryable
      @retry_after_ms = retry_after_ms
      @context = context
    end
  end

  # Text of a borrowed C string (empty for NULL).
  def self.read_cstr(ptr)
    ptr.null? ? '' : ptr.to_s.force_encoding(Encoding::UTF_8)
  end

  # A NUL-terminated copy for C.  Fiddle passes a String's own buffer, which
  # for a shared substring need not end in NUL; the explicit "\0" makes it.
  def self.cstr(str)
    "#{str}\0".b
  end

  # Turns a status into an exception.  Must run on the Ruby thread (and so the
  # OS thread) that made the call, before another tasker call there.
  def self.check(rc)
    return if rc == OK

    name = read_cstr(C.tasker_strerror(rc))
    err = C::Error.new(C.tasker_error_last)
    # Only trust the last error if it describes this failure.
    if err.code == rc
      raise Error.new(rc, name, read_cstr(C.tasker_error_category_name(err.category)),
                      read_cstr(err.message), read_cstr(err.context_json))
    end
    raise Error.new(rc, name, '', name, '{}')
  end

  def self.version
    read_cstr(C.tasker_version)
  end

  def self.abi_version
    C.tasker_abi_version
  end

  # Asks the library whether a binding built against +abi+ can use it.
  def self.check_abi(abi)
    check(C.tasker_abi_check(abi))
  end

  # One attempt of one step, as given to a handler.  Its methods may be called
  # from any Ruby thread; succeed/fail exactly once.
  class Step
    attr_reader :handler_name

    def initialize(ptr)
      @ptr = ptr
      @handler_name = Tasker.read_cstr(C.tasker_step_handler_name(ptr))
      @lock = Mutex.new
      @done = false
    end

    def name
      Tasker.read_cstr(C.tasker_step_name(@ptr))
    end

    def task_uuid
      Tasker.read_cstr(C.tasker_step_task_uuid(@ptr))
    end

    def attempt
      C.tasker_step_attempt(@ptr)
    end

    # The task's context, parsed.
    def context
      len = Fiddle::Pointer.malloc(Fiddle::SIZEOF_SIZE_T, Fiddle::RUBY_FREE)
      ptr = C.tasker_step_context(@ptr, len)
      return {} if ptr.null?

      JSON.parse(ptr.to_s(len[0, Fiddle::SIZEOF_SIZE_T].unpack1('J')))
    end

    # The result of dependency +dep+, parsed.
    def dependency_result(dep)
      out = Fiddle::Pointer.malloc(Fiddle::SIZEOF_VOIDP, Fiddle::RUBY_FREE)
      len = Fiddle::Pointer.malloc(Fiddle::SIZEOF_SIZE_T, Fiddle::RUBY_FREE)
      Tasker.check(C.tasker_step_dependency_result(out, len, @ptr, Tasker.cstr(dep)))
      json = out.ptr.to_s(len[0, Fiddle::SIZEOF_SIZE_T].unpack1('J'))
      JSON.parse(json, quirks_mode: true)
    end

    def completed?
      @done
    end

    # Completes the attempt with +value+ as its JSON result.
    def succeed(value = nil)
      complete do
        json = JSON.generate(value)
        C.tasker_step_succeed(@ptr, Tasker.cstr(json), json.bytesize)
      end
    end

    # Completes the attempt as failed (a Tasker::Failure or any exception).
    def fail(failure)
      failure = Failure.new(failure.message, error_class: failure.class.name) unless failure.is_a?(Failure)
      complete do
        f = C::Failure.malloc(Fiddle::RUBY_FREE)
        Tasker.check(C.tasker_failure_init(f, C::FAILURE_VERSION))
        # Keep the C copies referenced until the call returns.
        strings = [Tasker.cstr(failure.error_class), Tasker.cstr(failure.message),
                   failure.context && Tasker.cstr(JSON.generate(failure.context))]
        f.error_class = strings[0]
        f.message = strings[1]
        f.context_json = strings[2] || 0
        f.retryable = failure.retryable ? 1 : 0
        f.retry_after_ms = failure.retry_after_ms || -1
        rc = C.tasker_step_fail(@ptr, f)
        strings.clear
        rc
      end
    end

    private

    def complete
      @lock.synchronize do
        raise Error.new(ESTATE, 'TASKER_ESTATE', 'state', 'step already completed by this binding', '{}') if @done

        rc = yield
        @done = true unless rc == EINVAL # EINVAL (bad JSON) leaves the step in progress
        Tasker.check(rc)
      end
    end
  end

  # Owns a coordinator.  Use Coordinator.open { |c| ... } or call #close.
  class Coordinator
    def self.open(config = {})
      coord = new(config)
      return coord unless block_given?

      begin
        yield coord
      ensure
        coord.close
      end
    end

    def initialize(config = {})
      Tasker.check_abi(BINDING_ABI)
      cfg_out = Fiddle::Pointer.malloc(Fiddle::SIZEOF_VOIDP, Fiddle::RUBY_FREE)
      Tasker.check(C.tasker_config_new(cfg_out))
      cfg = cfg_out.ptr
      begin
        config.each { |k, v| Tasker.check(C.tasker_config_set(cfg, Tasker.cstr(k), Tasker.cstr(v))) }
        out = Fiddle::Pointer.malloc(Fiddle::SIZEOF_VOIDP, Fiddle::RUBY_FREE)
        Tasker.check(C.tasker_coordinator_open(out, cfg))
        @ptr = out.ptr
      ensure
        C.tasker_config_free(cfg)
      end
      @handlers = {}
      @lock = Mutex.new
      # Last resort only: a finalizer must not capture self.
      ObjectSpace.define_finalizer(self, self.class.finalizer(@ptr.to_i))
    end

    def self.finalizer(address)
      proc { C.tasker_coordinator_close(address) }
    end

    def close
      @lock.synchronize do
        return if @ptr.nil?

        ObjectSpace.undefine_finalizer(self)
        ptr = @ptr
        @ptr = nil
        Tasker.check(C.tasker_coordinator_close(ptr))
      end
    end

    def closed?
      @ptr.nil?
    end

    # Registers a handler in poll mode: tasker's threads never call it; #run does.
    def handle(name, &block)
      raise ArgumentError, 'a handler needs a block' unless block

      Tasker.check(C.tasker_handler_register(ptr, Tasker.cstr(name), nil, nil, nil))
      @handlers[name] = block
    end

    # Registers a template given as a Hash or a JSON string.
    def register_template(template)
      json = template.is_a?(String) ? template : JSON.generate(template)
      Tasker.check(C.tasker_template_register_json(ptr, Tasker.cstr(json), json.bytesize))
    end

    # Creates a task from namespace/name and returns its UUID.
    def create_task(namespace, name, context: nil, version: nil, idempotency_key: nil, priority: 0)
      req = C::TaskRequest.malloc(Fiddle::RUBY_FREE)
      Tasker.check(C.tasker_task_request_init(req, C::TASK_REQUEST_VERSION))
      ctx = context.nil? ? nil : (context.is_a?(String) ? context : JSON.generate(context))
      keep = [Tasker.cstr(namespace), Tasker.cstr(name), version && Tasker.cstr(version),
              ctx && Tasker.cstr(ctx), idempotency_key && Tasker.cstr(idempotency_key)]
      req.ns = keep[0]
      req.name = keep[1]
      req.template_version = keep[2] || 0
      req.context_json = keep[3] || 0
      req.context_len = ctx ? ctx.bytesize : 0
      req.idempotency_key = keep[4] || 0
      req.priority = priority
      uuid = Fiddle::Pointer.malloc(C::UUID_BUFSIZE, Fiddle::RUBY_FREE)
      Tasker.check(C.tasker_task_create(uuid, ptr, req))
      keep.clear
      uuid.to_s
    end

    # The task's state name without waiting.
    def state(uuid)
      out = Fiddle::Pointer.malloc(Fiddle::SIZEOF_INT, Fiddle::RUBY_FREE)
      rc = C.tasker_task_wait(out, ptr, Tasker.cstr(uuid), 0)
      Tasker.check(rc) unless rc == ETIMEOUT
      TASK_STATES.fetch(out[0, Fiddle::SIZEOF_INT].unpack1('i'), 'unknown')
    end

    def final?(uuid)
      !%w[pending running].include?(state(uuid))
    end

    # The task as a Hash (see docs: states, results, errors, transitions).
    def task(uuid)
      JSON.parse(task_json(uuid))
    end

    def task_json(uuid)
      out = Fiddle::Pointer.malloc(Fiddle::SIZEOF_VOIDP, Fiddle::RUBY_FREE)
      Tasker.check(C.tasker_task_get(out, ptr, Tasker.cstr(uuid)))
      str = out.ptr
      begin
        Tasker.read_cstr(str).dup
      ensure
        C.tasker_free(str) # the library allocated it
      end
    end

    # Runs handlers for ready steps on this thread until every task in +uuids+
    # is final, or raises Tasker::Error (ETIMEOUT) after +timeout+ seconds.
    def run(*uuids, timeout: 30, batch: 16)
      deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + timeout
      until uuids.all? { |u| final?(u) }
        now = Process.clock_gettime(Process::CLOCK_MONOTONIC)
        if now >= deadline
          raise Error.new(ETIMEOUT, 'TASKER_ETIMEOUT', 'queue', "tasks not final after #{timeout}s", '{}')
        end

        # Short select timeouts also notice completions made by other threads,
        # which make tasks final without making the descriptor readable.
        claimed = claim(batch)
        IO.select([event_io], nil, nil, [deadline - now, 0.05].min) if claimed.empty?
        claimed.each { |step| dispatch(step) }
      end
    end

    private

    def ptr
      @ptr or raise Error.new(ECLOSED, 'TASKER_ECLOSED', 'state', 'coordinator is closed', '{}')
    end

    def event_io
      @event_io ||= begin
        fd = Fiddle::Pointer.malloc(Fiddle::SIZEOF_INT, Fiddle::RUBY_FREE)
        Tasker.check(C.tasker_coordinator_fd(fd, ptr))
        # The descriptor belongs to the coordinator: never close it from Ruby.
        IO.for_fd(fd[0, Fiddle::SIZEOF_INT].unpack1('i'), autoclose: false)
      end
    end

    def claim(max)
      steps = Fiddle::Pointer.malloc(Fiddle::SIZEOF_VOIDP * max, Fiddle::RUBY_FREE)
      n = Fiddle::Pointer.malloc(Fiddle::SIZEOF_SIZE_T, Fiddle::RUBY_FREE)
      Tasker.check(C.tasker_coordinator_claim(steps, n, ptr, max))
      count = n[0, Fiddle::SIZEOF_SIZE_T].unpack1('J')
      steps[0, Fiddle::SIZEOF_VOIDP * count].unpack('J*').map { |addr| Step.new(Fiddle::Pointer.new(addr)) }
    end

    # Runs the handler; an exception it raises fails the attempt (a
    # Tasker::Failure as described, anything else retryable).
    def dispatch(step)
      handler = @handlers[step.handler_name]
      if handler.nil?
        step.fail(Failure.new("no Ruby handler for #{step.handler_name}", error_class: 'tasker.NoHandler', retryable: false))
        return
      end
      begin
        handler.call(step)
      rescue StandardError => e
        step.fail(e) unless step.completed?
      end
    end
  end
end
