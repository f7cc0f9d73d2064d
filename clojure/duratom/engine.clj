(ns duratom.engine
  "Commits a duratom's states to its store, and keeps the figures `stats` reports.

  Every mutation goes through `propose!` (under the duratom's lock), which
  computes the new state from the newest accepted one and queues it with a
  sequence number.

  Synchronous: the caller then waits in `await-durable!`. The first waiter
  becomes the leader and writes the newest queued state; every state queued up
  to then is a prefix of that snapshot, so one durable write acknowledges them
  all (group commit). If the write fails, every state queued since the last
  durable one is dropped and their callers throw: memory never runs ahead of
  storage, and a swap! that threw leaves no trace.

  Asynchronous: `propose!` makes sure a writer is running; it never encodes
  or writes on the caller's thread. The writer, on a shared pool of daemon
  threads, writes only the newest state each time round, so the last state
  always lands however fast states come. When a write fails and there is no
  `:error-handler`, the writer keeps the newest state and retries with
  backoff; `flush!` and `stats` show the failure.

  A JVM shutdown hook flushes every engine with pending states (bounded)."
  (:require [duratom.storage :as storage])
  (:import (java.util.concurrent Executors ExecutorService ThreadFactory ConcurrentHashMap)
           (java.util.concurrent.atomic AtomicLong AtomicBoolean AtomicReference)
           (java.util.concurrent.locks ReentrantLock)
           (java.util Set)))

(set! *warn-on-reflection* true)

(defonce ^:private ^ExecutorService writers
  (let [n (AtomicLong.)]
    (Executors/newCachedThreadPool
     (reify ThreadFactory
       (newThread [_ r]
         (doto (Thread. ^Runnable r (str "duratom-writer-" (.incrementAndGet n)))
           (.setDaemon true)))))))

;; Engines whose writer is running, for the shutdown hook.
(defonce ^:private ^Set writing (ConcurrentHashMap/newKeySet))

(def ^:private max-backoff-ms 1000)

;; All mutable state sits in atomics and is changed while holding `monitor`,
;; so every step sees one consistent picture; `io-lock` is held around each
;; commit, so that destroy! waits for one in flight.
(defrecord Engine [store encode sync? error-handler
                   ^Object monitor ^ReentrantLock io-lock
                   ^AtomicLong commits ^AtomicLong failures
                   ^AtomicLong bytes-written ^AtomicLong last-commit-nanos
                   ^AtomicReference last-error
                   ^AtomicReference latest    ; newest accepted state
                   ^AtomicReference durable   ; newest state known durable (sync mode's deref)
                   ^AtomicLong requested      ; count of states accepted
                   ^AtomicLong written        ; count of those known durable
                   ^AtomicLong acked          ; sync: count whose callers may return
                   ^AtomicLong failed         ; sync: count whose callers must throw
                   ^AtomicBoolean leading     ; sync: a caller is writing for the group
                   ^AtomicBoolean scheduled   ; async: a writer is running or will run
                   ^AtomicBoolean closed
                   ^AtomicReference version   ; shared: version of the durable state as last seen
                   ^AtomicLong conflicts])    ; shared: commits refused because storage moved

(defn engine
  "An engine committing to `store` (duratom.storage) with `encode` (value ->
  bytes), starting from `value`, which is stored already. `sync?`: callers
  wait until their state is durable. `error-handler`: the `:rw` option,
  `(fn [exception recommit])`."
  [store encode sync? error-handler value version]
  (->Engine store encode (boolean sync?) error-handler
            (Object.) (ReentrantLock.)
            (AtomicLong.) (AtomicLong.) (AtomicLong.) (AtomicLong.)
            (AtomicReference.) (AtomicReference. value) (AtomicReference. value)
            (AtomicLong.) (AtomicLong.) (AtomicLong.) (AtomicLong.)
            (AtomicBoolean.) (AtomicBoolean.) (AtomicBoolean.)
            (AtomicReference. version) (AtomicLong.)))

(defn- commit-bytes!
  "Commits `encoded` (a duratom.edn.Encoded) unless the engine is closed, keeping the figures; returns
  the new version, or nil when `expected` (see duratom.storage/commit!) did
  not hold. Holds io-lock."
  [^Engine e encoded ^long t0 expected]
  (let [^ReentrantLock io-lock (:io-lock e)]
    (.lock io-lock)
    (try
      (when (.get ^AtomicBoolean (:closed e))
        (throw (IllegalStateException. "duratom: the duratom has been destroyed")))
      (when-let [version (storage/commit! (:store e) encoded expected)]
        (.set ^AtomicReference (:version e) version)
        (.incrementAndGet ^AtomicLong (:commits e))
        (.addAndGet ^AtomicLong (:bytes-written e) (long (:size encoded)))
        (.set ^AtomicLong (:last-commit-nanos e) (- (System/nanoTime) t0))
        version)
      (finally (.unlock io-lock)))))

(defn- failed!
  "Counts `x` as a persistence failure and keeps it as the last error."
  [^Engine e x]
  (.incrementAndGet ^AtomicLong (:failures e))
  (.set ^AtomicReference (:last-error e) x)
  x)

(defn- encode-and-commit!
  "Encodes and commits `value` unconditionally; returns nil, or the Throwable
  it failed with (counted and kept as the last error)."
  [^Engine e value]
  (try (commit-bytes! e ((:encode e) value) (System/nanoTime) nil)
       nil
       (catch Throwable x (failed! e x))))

(defn commit-initial!
  "Durably stores `value` before the duratom exists (its `:init`); throws on
  failure. `only-if-empty?`: write only if storage still holds nothing;
  returns false (nothing written) when it does."
  [^Engine e value only-if-empty?]
  (let [version (try (commit-bytes! e ((:encode e) value) (System/nanoTime)
                                    (when only-if-empty? :nothing))
                     (catch Throwable x (throw (failed! e x))))]
    (some? version)))

(defn current
  "The value deref gives from memory: the newest durable state in synchronous
  mode, the newest state in asynchronous mode."
  [^Engine e]
  (let [^AtomicReference r (if (:sync? e) (:durable e) (:latest e))]
    (.get r)))

(declare wake-writer!)

(defn- accept!
  "(f newest), validated and made the newest state: [seq old new], or nil
  when `f` returns `abort`."
  [^Engine e f validate! abort]
  (let [^AtomicReference latest (:latest e)
        old (.get latest)
        new (f old)]
    (when-not (identical? new abort)
      (validate! new)
      ;; `latest` before `requested`: a writer that sees the count sees the state
      (.set latest new)
      [(.incrementAndGet ^AtomicLong (:requested e)) old new])))

(defn propose!
  "Computes `(f newest)` from the newest accepted state, validates it with
  `validate!` and accepts it. Returns `[seq old new]`, or nil (nothing
  changes) when `f` returns `abort`. Call under the duratom's lock.
  Synchronous mode holds the monitor throughout, so that a failed group
  commit cannot drop states while one is being computed from them;
  asynchronous mode needs no more than the duratom's lock and a wake-up of
  the writer, which keeps swap! close to an atom's cost."
  [^Engine e f validate! abort]
  (if (:sync? e)
    (locking (:monitor e)
      (accept! e f validate! abort))
    (let [accepted (accept! e f validate! abort)]
      (when accepted (wake-writer! e))
      accepted)))

(defn- failure-ex
  "The exception a caller sees for a state that could not be written."
  [^Engine e ^Throwable x]
  (if (instance? IllegalStateException x)
    x
    (ex-info (str "duratom: the state could not be written: " (.getMessage x))
             (merge {:duratom/backend (:backend (:store e))
                     :duratom/resource (:resource (:store e))}
                    (ex-data x))
             x)))

(defn await-durable!
  "Synchronous mode: returns once state `seq` is durable; throws when it
  cannot be written (then it is dropped from memory too). With an
  :error-handler the state is kept instead and the handler told, as the
  original library did."
  [^Engine e ^long seq]
  (let [^Object monitor (:monitor e)
        ^AtomicLong requested (:requested e)
        ^AtomicLong written (:written e)
        ^AtomicLong acked (:acked e)
        ^AtomicLong failed (:failed e)
        ^AtomicBoolean leading (:leading e)
        ^AtomicReference latest (:latest e)
        ^AtomicReference durable (:durable e)]
    (loop []
      (let [step (locking monitor
                   (cond (>= (.get acked) seq) :done
                         (>= (.get failed) seq) :failed
                         (.get leading) (do (.wait monitor) :again)
                         :else (do (.set leading true) [(.get requested) (.get latest)])))]
        (case step
          :done nil
          :failed (throw (failure-ex e (.get ^AtomicReference (:last-error e))))
          :again (recur)
          (let [[target value] step
                x (encode-and-commit! e value)
                handler (:error-handler e)]
            (locking monitor
              (.set leading false)
              (cond
                (nil? x) (do (.set written (max (.get written) (long target)))
                             (.set acked (max (.get acked) (long target)))
                             (.set durable value))
                handler (do (.set acked (max (.get acked) (long target))) ; kept, pending
                            (.set durable value))
                ;; Drop every state accepted since the last durable one: they
                ;; were computed from the state that failed.
                :else (do (.set failed (.get requested))
                          (.set written (.get requested)) ; dropped: no longer pending
                          (.set latest (.get durable))))
              (.notifyAll monitor))
            (when (and x handler)
              (try (handler x #(wake-writer! e))
                   (catch Throwable _ nil))) ; the contract: handler exceptions are swallowed
            (recur)))))))

(defn adopt!
  "Makes `value`, stored as `version`, the newest state (it was read from
  storage). Returns the state it replaces."
  [^Engine e value version]
  (locking (:monitor e)
    (let [old (.get ^AtomicReference (:durable e))]
      (.set ^AtomicReference (:latest e) value)
      (.set ^AtomicReference (:durable e) value)
      (.set ^AtomicReference (:version e) version)
      old)))

(defn stored-version
  "The version of the durable state as this engine last saw it."
  [^Engine e]
  (.get ^AtomicReference (:version e)))

(defn shared-update!
  "Shared mode: a compare-and-set loop whose register is the storage itself.
  Computes `(f state)`, validates, and commits only if storage still holds
  the version this engine last saw. When another process wrote meanwhile,
  calls `(reload!)` (which must adopt! the stored state) and starts again, so
  `f` may run more than once. Returns [old new], or nil when `f` returns
  `abort`. Call under the duratom's lock."
  [^Engine e f validate! abort reload!]
  (loop []
    (let [old (.get ^AtomicReference (:durable e))
          new (f old)]
      (when-not (identical? new abort)
        (validate! new)
        (let [version (stored-version e)
              committed (try (commit-bytes! e ((:encode e) new) (System/nanoTime) (or version :nothing))
                             (catch Throwable x (throw (failure-ex e (failed! e x)))))]
          (if committed
            (do (locking (:monitor e) ; commit-bytes! already recorded the version
                  (.set ^AtomicReference (:latest e) new)
                  (.set ^AtomicReference (:durable e) new)
                  (.set ^AtomicLong (:written e) (.incrementAndGet ^AtomicLong (:requested e))))
                [old new])
            (do (.incrementAndGet ^AtomicLong (:conflicts e))
                (reload!)
                (recur))))))))

(declare write-loop)

(defn- wake-writer!
  "Starts a writer unless one is running (or the engine is closed)."
  [^Engine e]
  (let [^AtomicBoolean scheduled (:scheduled e)]
    (when (and (not (.get scheduled))
               (not (.get ^AtomicBoolean (:closed e)))
               (.compareAndSet scheduled false true))
      (.add writing e)
      (.execute writers ^Runnable (fn [] (write-loop e))))))

(defn recommit!
  "Schedules a write of the newest state: the `recommit` an :error-handler gets."
  [^Engine e]
  (wake-writer! e))

(defn- stop-writer!
  "Marks the writer stopped. Call holding the monitor."
  [^Engine e]
  (.set ^AtomicBoolean (:scheduled e) false)
  (.remove writing e)
  (.notifyAll ^Object (:monitor e)))

(defn- write-loop
  "The writer: writes the newest state until none is pending; on failure calls
  the :error-handler and stops, or (without one) backs off and retries."
  [^Engine e]
  (let [^Object monitor (:monitor e)
        ^AtomicLong requested (:requested e)
        ^AtomicLong written (:written e)
        ^AtomicBoolean closed (:closed e)]
    (loop [attempt 0]
      (let [[target value] (locking monitor [(.get requested) (.get ^AtomicReference (:latest e))])
            failure (encode-and-commit! e value)]
        (cond
          (nil? failure)
          (when (locking monitor
                  (when (> (long target) (.get written)) (.set written target))
                  (.set ^AtomicReference (:durable e) value)
                  (.notifyAll monitor)
                  (or (and (> (.get requested) (.get written)) (not (.get closed)))
                      (do (stop-writer! e)
                          ;; a swap! may have accepted a state after the check
                          ;; and seen the writer still scheduled: take it on
                          (and (> (.get requested) (.get written))
                               (not (.get closed))
                               (.compareAndSet ^AtomicBoolean (:scheduled e) false true)
                               (do (.add writing e) true)))))
            (recur 0))

          (:error-handler e)
          (do (locking monitor (stop-writer! e))
              (when-not (.get closed)
                (try ((:error-handler e) failure #(recommit! e))
                     (catch Throwable _ nil)))) ; the contract: handler exceptions are swallowed

          :else
          (when (locking monitor
                  (.notifyAll monitor)
                  (when-not (.get closed)
                    ;; back off; flush! and destroy! wake us early
                    (.wait monitor (long (min max-backoff-ms (bit-shift-left 10 (min attempt 10))))))
                  (if (.get closed)
                    (do (stop-writer! e) false)
                    true))
            (recur (inc attempt))))))))

(defn flush!
  "Waits until every state requested before the call is durable. Returns
  true; false when `timeout-ms` (nil: no limit) passes first. Throws the last
  persistence error when a write of the pending state fails meanwhile, or
  failed and nothing is retrying it."
  [^Engine e timeout-ms]
  (let [deadline (when timeout-ms (+ (System/nanoTime) (* 1000000 (long timeout-ms))))
        ^Object monitor (:monitor e)
        ^AtomicLong failures (:failures e)]
    (locking monitor
      (let [target (.get ^AtomicLong (:requested e))
            failures-before (.get failures)]
        (.notifyAll monitor) ; cut a writer's backoff short
        (loop []
          (cond
            (or (>= (.get ^AtomicLong (:written e)) target) (.get ^AtomicBoolean (:closed e)))
            true

            (or (> (.get failures) failures-before)
                (and (not (.get ^AtomicBoolean (:scheduled e)))
                     (not (.get ^AtomicBoolean (:leading e)))
                     (some? (.get ^AtomicReference (:last-error e)))))
            (let [^Throwable x (.get ^AtomicReference (:last-error e))]
              (throw (ex-info (str "duratom: the pending state cannot be written: " (.getMessage x))
                              (merge {:duratom/backend (:backend (:store e))
                                      :duratom/resource (:resource (:store e))}
                                     (ex-data x))
                              x)))

            :else
            (let [remaining-ms (when deadline (quot (- (long deadline) (System/nanoTime)) 1000000))]
              (if (and remaining-ms (<= (long remaining-ms) 0))
                false
                (do (.wait monitor (long (or remaining-ms 0)))
                    (recur))))))))))

(defn stats
  "The figures of duratom.core/stats."
  [^Engine e]
  (locking (:monitor e)
    {:commits (.get ^AtomicLong (:commits e))
     :failures (.get ^AtomicLong (:failures e))
     :bytes-written (.get ^AtomicLong (:bytes-written e))
     :pending? (> (.get ^AtomicLong (:requested e)) (.get ^AtomicLong (:written e)))
     :last-error (.get ^AtomicReference (:last-error e))
     :last-commit-nanos (.get ^AtomicLong (:last-commit-nanos e))
     :commit-mode (if (:sync? e) :sync :async)
     :conflicts (.get ^AtomicLong (:conflicts e))}))

(defn destroy!
  "Deletes what is stored, stops the writer and releases the store. Waits for
  a commit in flight, so nothing is written after the delete. If the delete
  fails, throws and leaves the engine working."
  [^Engine e]
  (let [^ReentrantLock io-lock (:io-lock e)]
    (.lock io-lock)
    (try
      (storage/delete! (:store e))
      (locking (:monitor e)
        (.set ^AtomicBoolean (:closed e) true)
        (stop-writer! e))
      (storage/close! (:store e))
      (finally (.unlock io-lock)))))

(defonce ^:private shutdown-hook
  (.addShutdownHook (Runtime/getRuntime)
                    (Thread. ^Runnable (fn []
                                         (doseq [e (vec writing)]
                                           (try (flush! e 10000) (catch Throwable _ nil))))
                             "duratom-shutdown-flush")))
