(ns duratom.engine
  "Commits a duratom's states to its store, and keeps the figures `stats` reports.

  Synchronous: `persist!` encodes and commits on the caller's thread and
  returns once the state is durable (or throws).

  Asynchronous: `request!` records the newest state and makes sure a writer
  is running; it never encodes or writes on the caller's thread. The writer,
  on a shared pool of daemon threads, writes only the newest state each time
  round, so the last state always lands however fast states come. When a write
  fails and there is no `:error-handler`, the writer keeps the newest state and
  retries with backoff; `flush!` and `stats` show the failure.

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
;; so every step below sees one consistent picture; `io-lock` is held around
;; each commit, so that destroy! waits for one in flight.
(defrecord Engine [store encode sync? error-handler
                   ^Object monitor ^ReentrantLock io-lock
                   ^AtomicLong commits ^AtomicLong failures
                   ^AtomicLong bytes-written ^AtomicLong last-commit-nanos
                   ^AtomicReference last-error
                   ^AtomicReference latest    ; newest state requested
                   ^AtomicLong requested      ; count of states requested
                   ^AtomicLong written        ; count of those known durable
                   ^AtomicBoolean scheduled   ; a writer is running or will run
                   ^AtomicBoolean closed])

(defn engine
  "An engine committing to `store` (duratom.storage) with `encode` (value ->
  bytes). `sync?`: commit on the caller's thread. `error-handler`: the `:rw`
  option, `(fn [exception recommit])`."
  [store encode sync? error-handler]
  (->Engine store encode (boolean sync?) error-handler
            (Object.) (ReentrantLock.)
            (AtomicLong.) (AtomicLong.) (AtomicLong.) (AtomicLong.)
            (AtomicReference.) (AtomicReference.)
            (AtomicLong.) (AtomicLong.) (AtomicBoolean.) (AtomicBoolean.)))

(defn- commit-bytes!
  "Commits `bytes` unless the engine is closed, keeping the figures. Holds io-lock."
  [^Engine e ^bytes bytes ^long t0]
  (let [^ReentrantLock io-lock (:io-lock e)]
    (.lock io-lock)
    (try
      (when (.get ^AtomicBoolean (:closed e))
        (throw (IllegalStateException. "duratom: the duratom has been destroyed")))
      (storage/commit! (:store e) bytes nil)
      (.incrementAndGet ^AtomicLong (:commits e))
      (.addAndGet ^AtomicLong (:bytes-written e) (alength bytes))
      (.set ^AtomicLong (:last-commit-nanos e) (- (System/nanoTime) t0))
      (catch Throwable x
        (.incrementAndGet ^AtomicLong (:failures e))
        (.set ^AtomicReference (:last-error e) x)
        (throw x))
      (finally (.unlock io-lock)))))

(defn persist!
  "Synchronously encodes and durably commits `value`; throws on failure."
  [^Engine e value]
  (let [t0 (System/nanoTime)
        bytes (try ((:encode e) value)
                   (catch Throwable x
                     (.incrementAndGet ^AtomicLong (:failures e))
                     (.set ^AtomicReference (:last-error e) x)
                     (throw x)))]
    (commit-bytes! e bytes t0)
    (locking (:monitor e)
      ;; A recommit still pending will now write this newer value.
      (.set ^AtomicReference (:latest e) value)
      (let [n (.incrementAndGet ^AtomicLong (:requested e))]
        (when-not (.get ^AtomicBoolean (:scheduled e))
          (.set ^AtomicLong (:written e) n))))
    true))

(defn mark-unwritten!
  "A synchronous commit failed but the state was kept (an :error-handler is in
  charge of it): `flush!` and `stats` now report it pending."
  [^Engine e value]
  (locking (:monitor e)
    (.set ^AtomicReference (:latest e) value)
    (.incrementAndGet ^AtomicLong (:requested e))))

(declare write-loop)

(defn- ensure-writer!
  "Starts a writer unless one is running. Call holding the monitor."
  [^Engine e]
  (when-not (or (.get ^AtomicBoolean (:scheduled e)) (.get ^AtomicBoolean (:closed e)))
    (.set ^AtomicBoolean (:scheduled e) true)
    (.add writing e)
    (.execute writers ^Runnable (fn [] (write-loop e)))))

(defn request!
  "Asynchronously commits `value`, the newest state. Never encodes or writes
  on the caller's thread."
  [^Engine e value]
  (locking (:monitor e)
    (.set ^AtomicReference (:latest e) value)
    (.incrementAndGet ^AtomicLong (:requested e))
    (ensure-writer! e)))

(defn recommit!
  "Schedules a write of the newest state: the `recommit` an :error-handler gets."
  [^Engine e]
  (locking (:monitor e)
    (ensure-writer! e)))

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
            failure (try (commit-bytes! e ((:encode e) value) (System/nanoTime))
                         nil
                         (catch Throwable x x))]
        (cond
          (nil? failure)
          (when (locking monitor
                  (when (> (long target) (.get written)) (.set written target))
                  (if (and (> (.get requested) (.get written)) (not (.get closed)))
                    (do (.notifyAll monitor) true)
                    (do (stop-writer! e) false)))
            (recur 0))

          (:error-handler e)
          (do (when-not (instance? IllegalStateException failure) ; destroyed meanwhile
                (.set ^AtomicReference (:last-error e) failure))
              (locking monitor (stop-writer! e))
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
                (not (.get ^AtomicBoolean (:scheduled e))))
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
     :commit-mode (if (:sync? e) :sync :async)}))

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
