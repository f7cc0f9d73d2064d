(ns duratom.engine
  "Commits a duratom's states to its store, and keeps the figures `stats` reports.

  Every mutation goes through `propose!` (under the duratom's lock), which
  computes the new state from the newest accepted one and queues it with a
  sequence number.

  Every write goes through `write-newest!`: under `io-lock` it takes the
  newest accepted state, encodes it and commits it. Because the snapshot is
  taken under the same lock as the write, storage never goes back to an older
  state, whichever thread writes (a leader, the asynchronous writer, a
  recommit). A hook that must run before each commit belongs there.

  Synchronous: a state joins the open *group*; the caller then waits in
  `await-durable!` for its own group's outcome. The first waiter becomes the
  leader and writes the newest state, which closes the open group: every state
  in it is a prefix of that snapshot, so one durable write acknowledges them
  all (group commit). If the write fails, that group and every state accepted
  since are dropped and their callers throw: memory never runs ahead of
  storage, and a swap! that threw leaves no trace. With an `:error-handler`
  the leader instead calls it (inside the leader's turn, so a `recommit` it
  makes is durable before any swap! of the group returns) and the states are
  kept, as the original library did.

  Asynchronous: `propose!` makes sure a writer is running; it never encodes
  or writes on the caller's thread, nor takes the monitor. The writer, on a
  shared pool of daemon threads, writes only the newest state each time round,
  so the last state always lands however fast states come. When a write fails
  and there is no `:error-handler`, the writer keeps the newest state, retries
  with backoff and logs the start and the end of the failure streak; `flush!`
  and `stats` show the failure. With an `:error-handler`, the writer calls it
  and stops unless it recommits or newer states arrive.

  Nothing here hashes or compares states: a state whose hashCode or equals
  throws is just a state. Every Throwable of a write is caught and becomes
  that write's outcome, so no failure leaves a leader or a writer behind.

  A JVM shutdown hook flushes every engine with pending states (bounded)."
  (:require [duratom.storage :as storage])
  (:import (java.util.concurrent ThreadFactory ConcurrentHashMap LinkedBlockingQueue
                                 ScheduledThreadPoolExecutor ScheduledFuture TimeUnit)
           (java.util.concurrent.atomic AtomicLong AtomicBoolean AtomicReference)
           (java.util.concurrent.locks ReentrantLock)
           (java.util Set)
           (java.lang System$Logger System$Logger$Level)))

(set! *warn-on-reflection* true)

;; Engines whose writer is running, for the shutdown hook.
(defonce ^:private ^Set writing (ConcurrentHashMap/newKeySet))

(def ^:private max-backoff-ms 1000)

;; A handler that recommits, whose recommit fails and calls it again, and so
;; on: the original recursed without bound; past this depth a failed
;; recommit throws to the handler instead.
(def ^:private max-handler-depth 16)

;; ------------------------------------------------------------------ logging

(def ^:private tools-logging
  "(fn [level throwable message]) through clojure.tools.logging when it is on
  the classpath, else nil. Resolved once, at first use: no dependency."
  (delay
    (try
      (let [factory (requiring-resolve 'clojure.tools.logging/*logger-factory*)
            get-logger (requiring-resolve 'clojure.tools.logging.impl/get-logger)
            log* (requiring-resolve 'clojure.tools.logging/log*)]
        (fn [level x msg]
          (log* (get-logger @factory "duratom.engine") level x msg)))
      (catch Throwable _ nil))))

(defn- log!
  "Logs `msg` (and `x`, a Throwable or nil) at `level` (:warn or :info) as
  logger `duratom.engine`: through clojure.tools.logging when present, else
  System.Logger (java.util.logging unless configured otherwise). Never throws."
  [level ^String msg x]
  (try
    (if-let [tl @tools-logging]
      (tl level x msg)
      (let [^System$Logger logger (System/getLogger "duratom.engine")
            lvl (if (= level :warn) System$Logger$Level/WARNING System$Logger$Level/INFO)]
        (if x
          (.log logger lvl msg ^Throwable x)
          (.log logger lvl msg))))
    (catch Throwable _ nil)))

;; ------------------------------------------------------------ writer threads
;;
;; Asynchronous writers run on at most `writer-threads` daemon threads, shared
;; by every duratom of the JVM, so thousands of duratoms writing at once take
;; a handful of threads. A job waits in `jobs` until a thread is free. Threads
;; start when every running one is busy, and stay. A thread that cannot be
;; started (the process is out of threads) is tried again later by
;; `retries`, whose one thread is started when this namespace loads; the
;; jobs wait meanwhile. Backoff after a failed write is a job scheduled on
;; `retries`, not a sleeping writer.

(def ^:private writer-threads
  (max 1 (long (or (Long/getLong "duratom.writer.threads") 8))))

(defonce ^:private ^LinkedBlockingQueue jobs (LinkedBlockingQueue.))
(defonce ^:private ^AtomicLong started-writers (AtomicLong.))
(defonce ^:private ^AtomicLong idle-writers (AtomicLong.))
(defonce ^:private ^AtomicLong writer-names (AtomicLong.))

(defn- daemon-factory ^ThreadFactory [prefix ^AtomicLong n]
  (reify ThreadFactory
    (newThread [_ r]
      (doto (Thread. ^Runnable r (str prefix (.incrementAndGet n)))
        (.setDaemon true)))))

(defonce ^:private ^ScheduledThreadPoolExecutor retries
  (doto (ScheduledThreadPoolExecutor. 1 (daemon-factory "duratom-retry-" (AtomicLong.)))
    (.prestartCoreThread)))

(defn- writer-thread-body
  "A writer thread: runs jobs, forever. A job never throws (write-loop
  catches everything); this catch keeps the thread if one does."
  []
  (loop []
    (.incrementAndGet idle-writers)
    (let [^Runnable job (try (.take jobs) (finally (.decrementAndGet idle-writers)))]
      (try (.run job) (catch Throwable _ nil)))
    (recur)))

(defonce ^:private ^AtomicBoolean cannot-start (AtomicBoolean.)) ; in a streak of failed thread starts
(defonce ^:private ^AtomicBoolean retry-scheduled (AtomicBoolean.))

(defn- start-writers!
  "Starts a writer thread when jobs wait, none is idle and fewer than
  `writer-threads` run. When no thread can be started and none runs, tries
  again in `delay-ms` (doubling, at most a second). Logs the start and the
  end of a streak of failed starts."
  [^long delay-ms]
  (loop []
    (let [n (.get started-writers)]
      (when (and (pos? (.size jobs)) (zero? (.get idle-writers)) (< n (long writer-threads)))
        (when (.compareAndSet started-writers n (inc n))
          (let [started? (try (.start (.newThread (daemon-factory "duratom-writer-" writer-names)
                                                  ^Runnable writer-thread-body))
                              true
                              (catch Throwable x
                                (.decrementAndGet started-writers)
                                (when (.compareAndSet cannot-start false true)
                                  (log! :warn (str "duratom: no writer thread can be started; pending states"
                                                   " wait, and starting one is tried again: " x)
                                        nil))
                                false))]
            (if started?
              (do (when (.compareAndSet cannot-start true false)
                    (log! :info "duratom: writer threads start again; pending states are being written" nil))
                  (recur))
              (when (and (zero? (.get started-writers))
                         (.compareAndSet retry-scheduled false true))
                (.schedule retries
                           ^Runnable (fn []
                                       (.set retry-scheduled false)
                                       (start-writers! (min 1000 (* 2 delay-ms))))
                           delay-ms TimeUnit/MILLISECONDS)))))))))

(defn- submit!
  "Queues `job` for a writer thread."
  [^Runnable job]
  (.add jobs job)
  (start-writers! 50))

;; ------------------------------------------------------------------- engine

;; All mutable state sits in atomics. Synchronous mode changes it while
;; holding `monitor`, so a failed group cannot drop states that a swap! is
;; computing from. Asynchronous `propose!` does not take `monitor`: it updates
;; `latest` and `requested` under the duratom's own lock only. It sets
;; `latest` before `requested` and a snapshot reads `requested` first, so a
;; snapshot's count never covers a state newer than its value. `io-lock` is held around each
;; write (snapshot, encode, commit, record), so writes are ordered and
;; destroy! waits for one in flight. Lock order: io-lock, then monitor.
(defrecord Engine [store encode sync? error-handler conditional?
                   ^Object monitor ^ReentrantLock io-lock
                   ^AtomicLong commits ^AtomicLong failures
                   ^AtomicLong bytes-written ^AtomicLong last-commit-nanos
                   ^AtomicReference last-error
                   ^AtomicReference latest     ; newest accepted state
                   ^AtomicReference visible    ; sync deref: newest durable state (or one an :error-handler kept)
                   ^AtomicLong requested       ; count of states accepted
                   ^AtomicLong written         ; count of those durable (or given up)
                   ^AtomicLong attempts        ; writes begun
                   ^AtomicLong failed-attempt  ; the last failed write (its number among attempts)
                   ^AtomicLong failed-target   ; count of states the last failed write covered
                   ^AtomicReference open-group ; sync: outcome cell the states accepted now share
                   ^AtomicReference leader     ; sync: the thread writing for the groups, or nil
                   ^AtomicLong depth           ; sync: nesting of the leader's handler calls
                   ^AtomicBoolean scheduled    ; async: a writer is running or will run
                   ^AtomicReference handling   ; async: the writer thread while it runs the :error-handler
                   ^AtomicBoolean failing      ; async: in a logged failure streak
                   ^AtomicBoolean closed
                   ^AtomicReference version    ; version of the durable state as last seen
                   ^AtomicLong conflicts       ; shared: commits refused because storage moved
                   ^AtomicReference doubt      ; writes of unknown outcome since `version`: [[encoded value] ...] or nil
                   ^AtomicReference backoff    ; async: [ScheduledFuture attempt] of the writer's next round after a failure, or nil
                   ^AtomicBoolean vanished])   ; shared: the stored value was found gone; the next commit creates it

(defn- new-group
  "A group's outcome cell: nil while pending, then ::ok or the Throwable its
  write failed with."
  ^AtomicReference []
  (AtomicReference.))

(defn engine
  "An engine committing to `store` (duratom.storage) with `encode` (value ->
  duratom.edn.Encoded), starting from `value`, which is stored already as
  `version` (nil: nothing stored). The engine keeps the one record of the
  version last seen and hands it to every commit. `sync?`: callers wait until
  their state is durable. `error-handler`: the `:rw` option,
  `(fn [exception recommit])`."
  [store encode sync? error-handler value version]
  (->Engine store encode (boolean sync?) error-handler (storage/writes-can-land-late? store)
            (Object.) (ReentrantLock.)
            (AtomicLong.) (AtomicLong.) (AtomicLong.) (AtomicLong.)
            (AtomicReference.) (AtomicReference. value) (AtomicReference. value)
            (AtomicLong.) (AtomicLong.) (AtomicLong.) (AtomicLong.) (AtomicLong.)
            (AtomicReference. (new-group)) (AtomicReference.) (AtomicLong.)
            (AtomicBoolean.) (AtomicReference.) (AtomicBoolean.) (AtomicBoolean.)
            (AtomicReference. version) (AtomicLong.) (AtomicReference.) (AtomicReference.) (AtomicBoolean.)))

(defn- describe
  "A Throwable's message, or its class when it has none (StackOverflowError)."
  ^String [^Throwable x]
  (or (.getMessage x) (str x)))

(defn- where
  "`backend resource` of the engine's store, for messages."
  ^String [^Engine e]
  (str (some-> (:backend (:store e)) name) " " (:resource (:store e))))

(defn- destroyed-ex [^Engine e]
  (IllegalStateException. (str "duratom: " (where e) " has been destroyed")))

(defn- commit-bytes!
  "Commits `encoded` (a duratom.edn.Encoded) unless the engine is closed,
  keeping the figures; returns the new version, or nil when `expected` (see
  duratom.storage/commit!) did not hold. Holds io-lock."
  [^Engine e encoded ^long t0 expected]
  (let [^ReentrantLock io-lock (:io-lock e)]
    (.lock io-lock)
    (try
      (when (.get ^AtomicBoolean (:closed e))
        (throw (destroyed-ex e)))
      (when-let [version (storage/commit! (:store e) encoded expected (.get ^AtomicReference (:version e)))]
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

(defn- failure-ex
  "The exception a caller sees for a state that could not be written."
  [^Engine e ^Throwable x]
  (if (instance? IllegalStateException x)
    x
    (ex-info (str "duratom: the state could not be written: " (describe x))
             (merge {:duratom/backend (:backend (:store e))
                     :duratom/resource (:resource (:store e))}
                    (ex-data x))
             x)))

(defn- outcome-unknown?
  "Whether `x` says its write was sent and no answer came (it may have landed)."
  [x]
  (true? (:duratom/outcome-unknown? (ex-data x))))

;; ------------------------------------------------- writes of unknown outcome
;;
;; A commit that fails with its outcome unknown may land at any time, even
;; after storage was looked at (a stopped server applies it once continued).
;; While one is in doubt, every commit is conditional on the version this
;; engine last saw, so a landed unknown write makes the next commit fail
;; instead of being overwritten; and before the next commit (the next swap!
;; in synchronous mode, the writer's next round in asynchronous mode) and at
;; refresh!, storage is read and compared, byte for byte (a log-mode change
;; record: by the state it records), with the writes in
;; doubt. The doubt ends when one of them is found stored (it is adopted), when
;; another state is found stored, or when a conditional commit lands.

(declare stored-version)

(def ^:private max-doubts
  "Writes in doubt remembered at once (each keeps its encoded bytes)."
  8)

(defn- note-doubt!
  "Remembers the write of `value` as `encoded` when `x` says its outcome is
  unknown."
  [^Engine e encoded value x]
  (when (and encoded (outcome-unknown? x))
    (let [^ReentrantLock io-lock (:io-lock e)
          ^AtomicReference doubt (:doubt e)]
      (.lock io-lock)
      (try (.set doubt (vec (take-last max-doubts (conj (vec (.get doubt)) [encoded value]))))
           (finally (.unlock io-lock))))))

(defn- same-bytes?
  "Whether the bytes of `encoded` (a duratom.edn.Encoded) are exactly `b`."
  [encoded ^bytes b]
  (let [size (long (:size encoded))]
    (and (= size (alength b))
         (loop [chunks (seq (:chunks encoded)) pos 0]
           (cond (>= pos size) true
                 (nil? chunks) false
                 :else (let [^bytes c (first chunks)
                             n (min (alength c) (- size pos))]
                         (and (java.util.Arrays/equals c 0 (int n) b (int pos) (int (+ pos n)))
                              (recur (next chunks) (+ pos n)))))))))

(defn- holds-write?
  "Whether the stored bytes `b` are what the write of `encoded` left: its
  bytes, or for a log-mode change record (duratom.log), a log whose state
  is the one it records."
  [encoded ^bytes b]
  (or (same-bytes? encoded b)
      (when-let [stored? (:log/stored? encoded)]
        (try (boolean (stored? b)) (catch Exception _ false)))))

(defn- resolve-doubt!
  "Reads storage to settle the writes in doubt. Returns nil when none is in
  doubt; else [kind value stored] with what storage holds: kind :not-landed
  when it still holds the version last seen (they have not landed, yet: the
  doubt stays), :landed when it holds one of them (`value`; the doubt ends,
  nothing is adopted here), :other when it holds another state (the doubt
  ends). Throws when storage cannot be read. Holds io-lock."
  [^Engine e]
  (let [^AtomicReference doubt (:doubt e)]
    (when-let [writes (.get doubt)]
      (let [stored (storage/load-stored (:store e))]
        (if (= (:version stored) (.get ^AtomicReference (:version e)))
          [:not-landed nil stored]
          (do (.set doubt nil)
              (if-let [[_ value] (and stored
                                      (some (fn [w] (when (holds-write? (nth w 0) (:bytes stored)) w))
                                            (rseq writes)))]
                [:landed value stored]
                [:other nil stored])))))))

(defn- unwritten-ex
  "The ex-info of a commit that was not written: `msg` follows the backend
  and resource; the data names them, with `data` added."
  [^Engine e ^String msg data]
  (ex-info (str "duratom: " (where e) ": " msg)
           (merge {:duratom/backend (:backend (:store e))
                   :duratom/resource (:resource (:store e))
                   :duratom/op :commit}
                  data)))

(defn- landed-ex
  "The exception of swaps dropped because a write of unknown outcome landed
  before theirs (they were computed without it)."
  [^Engine e]
  (unwritten-ex e (str "the state was not written: an earlier write whose outcome was unknown has landed,"
                       " and the duratom now holds that state; nothing was overwritten")
                {:duratom/conflict? true}))

(defn- doubt-conflict-ex
  "The outcome of a commit made while a write was in doubt, refused because
  storage no longer holds the version last seen."
  [^Engine e]
  (unwritten-ex e (str "the state was not written: storage changed after a write whose outcome was unknown"
                       " (it may have landed since); nothing was overwritten, and the next commit or"
                       " refresh! reads what storage holds")
                {:duratom/conflict? true}))

(defn- adopt-landed!
  "Synchronous mode without :error-handler: a write of unknown outcome, of `value`, landed as
  `version`; it becomes the state in memory. States accepted but not yet
  written were computed without it: their group fails (nothing of theirs
  was written). Returns [old value]. Holds io-lock."
  [^Engine e value version]
  (locking (:monitor e)
    (let [^AtomicReference open (:open-group e)
          old (.get ^AtomicReference (:visible e))]
      (when (> (.get ^AtomicLong (:requested e)) (.get ^AtomicLong (:written e)))
        (.set ^AtomicReference (.get open) (landed-ex e))
        (.set open (new-group))
        (.set ^AtomicLong (:written e) (.get ^AtomicLong (:requested e))))
      (.set ^AtomicReference (:latest e) value)
      (.set ^AtomicReference (:visible e) value)
      (.set ^AtomicReference (:version e) version)
      (.set ^AtomicReference (:last-error e) nil)
      (.notifyAll ^Object (:monitor e))
      [old value])))

(defn- rolls-back?
  "Whether a failed write takes its states out of memory (synchronous mode
  without :error-handler); otherwise they stay, and newer states are
  computed from them."
  [^Engine e]
  (and (:sync? e) (nil? (:error-handler e))))

(defn- settle-doubt!
  "Settles the writes in doubt, if any (see resolve-doubt!). A landed one is
  adopted where the failure took it out of memory (see rolls-back?; returns
  {:adopted [old new]}, for the watches, with nil when it equals the state
  in memory); elsewhere memory holds it or
  states computed from it, so only its version is recorded and the newest
  state stays (returns {}). Returns {:stored stored} when none of them
  landed (storage still holds the version last seen, or another state this
  engine did not write), nil when nothing was in doubt. Holds io-lock."
  [^Engine e]
  (let [[kind value stored] (resolve-doubt! e)]
    (case kind
      nil nil
      (:not-landed :other) {:stored stored}
      :landed (if (rolls-back? e)
                (let [[old new :as change] (adopt-landed! e value (:version stored))]
                  ;; a write of the state memory holds (compact!) is no change to tell
                  {:adopted (when-not (try (= old new) (catch Throwable _ false)) change)})
                (do (.set ^AtomicReference (:version e) (:version stored)) {})))))

(defn in-doubt?
  "Whether a write of unknown outcome has not been settled yet."
  [^Engine e]
  (some? (.get ^AtomicReference (:doubt e))))

(defn check-doubt!
  "Synchronous mode without :error-handler, before a swap! computes its
  state: when a write of unknown outcome is in doubt, reads storage; if it
  landed, adopts it and returns [old new] (fire the watches), so the swap!
  builds on it. Throws when storage cannot be read (nothing was changed
  then)."
  [^Engine e]
  (when (and (rolls-back? e) (in-doubt? e)) ; elsewhere the writer settles it (see write-newest!)
    (let [^ReentrantLock io-lock (:io-lock e)]
      (.lock io-lock)
      (try
        (when-not (.get ^AtomicBoolean (:closed e))
          (let [r (try (settle-doubt! e)
                       (catch Throwable x
                         (throw (ex-info (str "duratom: " (where e) ": the state was not written: storage could"
                                              " not be read to learn whether an earlier write of unknown outcome"
                                              " landed: " (describe x))
                                         (merge {:duratom/backend (:backend (:store e))
                                                 :duratom/resource (:resource (:store e))}
                                                (ex-data x))
                                         x))))]
            (:adopted r)))
        (finally (.unlock io-lock))))))

(defn- drop-unwritten!
  "Sync without :error-handler, after a failed write of `group`: that group,
  and every state accepted since (computed from the failed state), fail with
  `x`; memory goes back to the last durable state. Call holding the monitor."
  [^Engine e ^AtomicReference group x]
  (let [^AtomicReference open (:open-group e)]
    (.set group x)
    (.set ^AtomicReference (.get open) x)
    (.set open (new-group))
    (.set ^AtomicReference (:latest e) (.get ^AtomicReference (:visible e)))
    (.set ^AtomicLong (:written e) (.get ^AtomicLong (:requested e)))))

(defn- settle!
  "Records the outcome `x` (nil: it landed) of the write of `value`, the
  snapshot of the first `target` states, which closed `group`. Sync without
  :error-handler (or once destroyed), a failure drops the group's states
  (see drop-unwritten!); with one, they are kept and the group's outcome is
  left to the leader, which tells the handler first. Call holding the monitor."
  [^Engine e attempt target value ^AtomicReference group x]
  (if (nil? x)
    (let [^AtomicLong written (:written e)]
      (when (> (long target) (.get written)) (.set written (long target)))
      (.set ^AtomicReference (:visible e) value)
      (.set ^AtomicReference (:last-error e) nil)
      (.set group ::ok))
    (do (failed! e x)
        (.set ^AtomicLong (:failed-attempt e) (long attempt))
        (.set ^AtomicLong (:failed-target e) (long target))
        (when (:sync? e)
          (if (or (nil? (:error-handler e)) (.get ^AtomicBoolean (:closed e)))
            (drop-unwritten! e group x)
            (.set ^AtomicReference (:visible e) value)))))) ; kept, as the original did

(defn- refusal?
  "Whether `x` is the codec refusing the state itself (duratom.edn): the same
  state is refused every time, so only a newer state can be written."
  [^Throwable x]
  (some? (:duratom/refused (ex-data x))))

(defn- streak-begins!
  "Logs the start of a failure streak of the asynchronous writer (at most
  once per streak); `x`: the failure."
  [^Engine e ^Throwable x]
  (when (.compareAndSet ^AtomicBoolean (:failing e) false true)
    (log! :warn (str "duratom: asynchronous writes to " (where e) " fail; the newest state is kept"
                     " in memory and "
                     (if (refusal? x) "written when a newer state replaces it" "retried with backoff")
                     ": " (describe x))
          x)))

(defn- streak-ends!
  "Logs the end of a failure streak (at most once per streak)."
  [^Engine e]
  (when (.compareAndSet ^AtomicBoolean (:failing e) true false)
    (log! :info (str "duratom: asynchronous writes to " (where e) " work again; the newest state is stored")
          nil)))

(def ^:private max-overwrites
  "Conditional commits made in a row over states another writer stored."
  3)

(defn- commit-over-another!
  "Outside shared mode, after a conditional commit of `encoded` failed
  because another writer stored a state: reads the version stored now and
  commits over it, as the last writer; storage is not decoded (outside
  shared mode this duratom's state wins). Returns nil when it landed, else
  the exception to fail with. Holds io-lock."
  [^Engine e encoded t0]
  (loop [n 1]
    (let [stored (storage/load-stored (:store e))]
      (.set ^AtomicReference (:version e) (:version stored))
      (cond
        (commit-bytes! e encoded t0 (or (:version stored) :nothing)) nil
        (< n (long max-overwrites)) (recur (inc n))
        :else (unwritten-ex e (str "the state was not written: storage changed under every one of "
                                   max-overwrites " conditional commits (another writer keeps writing there)")
                            {:duratom/conflict? true})))))

(defn- write-newest!
  "Writes the newest accepted state; returns [x group target]: x is nil when
  it landed, else the Throwable the write failed with (counted, kept as the
  last error); group is the sync group the write closed, target the count of
  states it covers. Snapshot, encode, commit and settle! all happen under
  io-lock, so writes land in the order of their snapshots, whichever thread
  writes. Every Throwable of the write is its outcome; this throws only when
  even the snapshot cannot be taken (nothing was closed or written then)."
  [^Engine e]
  (let [^ReentrantLock io-lock (:io-lock e)
        ^Object monitor (:monitor e)]
    (.lock io-lock)
    (try
      (let [snapshot (locking monitor
                       (let [^AtomicReference open (:open-group e)
                             group (.get open)]
                         (.set open (new-group))
                         [(.get ^AtomicLong (:requested e)) (.get ^AtomicReference (:latest e)) group
                          (.incrementAndGet ^AtomicLong (:attempts e))]))
            target (long (nth snapshot 0))
            value (nth snapshot 1)
            ^AtomicReference group (nth snapshot 2)
            attempt (nth snapshot 3)
            encoded (volatile! nil)
            x (try (let [t0 (System/nanoTime)
                         enc ((:encode e) value)
                         _ (vreset! encoded enc)
                         ;; where memory kept the state (asynchronous, or an
                         ;; :error-handler), learn first whether a write in
                         ;; doubt landed; elsewhere the next swap! does, before
                         ;; computing its state (see check-doubt!)
                         _ (when-not (rolls-back? e) (settle-doubt! e))
                         doubt? (in-doubt? e)]
                     (cond
                       (commit-bytes! e enc t0 (when (or doubt? (:conditional? e))
                                                 (or (stored-version e) :nothing)))
                       (do (when doubt? (.set ^AtomicReference (:doubt e) nil)) nil)

                       doubt? (doubt-conflict-ex e)
                       :else (commit-over-another! e enc t0)))
                   (catch Throwable x
                     (note-doubt! e @encoded value x)
                     x))
            ;; before flush! hears of it, so that the log says it first
            _ (when (and (nil? x) (.get ^AtomicBoolean (:failing e))) (streak-ends! e))
            x (try (locking monitor
                     (settle! e attempt target value group x)
                     (.notifyAll monitor))
                   x
                   (catch Throwable y ; bookkeeping failed (OutOfMemoryError): settle as a failure
                     (locking monitor
                       (try (settle! e attempt target value group y)
                            (catch Throwable _ (.set group y)))
                       (.notifyAll monitor))
                     y))]
        [x group target])
      (finally (.unlock io-lock)))))

(defn commit-initial!
  "Durably stores `value` before the duratom exists (its `:init`); throws on
  failure. `only-if-empty?`: write only if storage still holds nothing (so
  always where writes can land late, see duratom.storage);
  returns false (nothing written) when it does."
  [^Engine e value only-if-empty?]
  (let [version (try (commit-bytes! e ((:encode e) value) (System/nanoTime)
                                    (when (or only-if-empty? (:conditional? e)) :nothing))
                     (catch Throwable x (throw (failed! e x))))]
    (some? version)))

(defn current
  "The value deref gives from memory: the newest durable state in synchronous
  mode (or one an :error-handler kept), the newest state in asynchronous mode."
  [^Engine e]
  (let [^AtomicReference r (if (:sync? e) (:visible e) (:latest e))]
    (.get r)))

(declare wake-writer!)

(defn- accept!
  "(f newest), validated and made the newest state: [ticket old new], or nil
  when `f` returns `abort`. The ticket is the open group (sync) or the
  sequence number (async)."
  [^Engine e f validate! abort]
  (let [^AtomicReference latest (:latest e)
        old (.get latest)
        new (f old)]
    (when-not (identical? new abort)
      (validate! new)
      ;; `latest` before `requested`: a writer that sees the count sees the state
      (.set latest new)
      (let [n (.incrementAndGet ^AtomicLong (:requested e))]
        [(if (:sync? e) (.get ^AtomicReference (:open-group e)) n) old new]))))

(defn propose!
  "Computes `(f newest)` from the newest accepted state, validates it with
  `validate!` and accepts it. Returns `[ticket old new]` (pass the ticket to
  `await-durable!`), or nil (nothing changes) when `f` returns `abort`. Call
  under the duratom's lock. Synchronous mode holds the monitor throughout, so
  that a failed group commit cannot drop states while one is being computed
  from them; asynchronous mode needs no more than the duratom's lock and a
  wake-up of the writer, which keeps swap! close to an atom's cost."
  [^Engine e f validate! abort]
  (if (:sync? e)
    (locking (:monitor e)
      (accept! e f validate! abort))
    (let [accepted (accept! e f validate! abort)]
      (when accepted (wake-writer! e))
      accepted)))

;; ------------------------------------------------------- synchronous mode

(declare recommit-fn)

(defn- lead!
  "Sync, holding the leadership: writes the newest state for the waiting
  groups. On failure with an :error-handler, calls it here, inside the
  leader's turn (a recommit it makes commits at once), then lets the group's
  swaps return with their states kept, as the original library did. Never
  throws, except past max-handler-depth of nested recommits: then the failure
  is thrown to the handler that recommitted."
  [^Engine e]
  (let [[x ^AtomicReference group] (write-newest! e)
        handler (:error-handler e)
        ^Object monitor (:monitor e)
        ^AtomicLong depth (:depth e)]
    (when (and x handler (nil? (.get group))) ; not when it was dropped (destroyed)
      (let [d (.incrementAndGet depth)]
        (try
          (if (> d max-handler-depth)
            (throw (failure-ex e x))
            (try (handler x (recommit-fn e))
                 (catch Throwable _ nil))) ; the contract: handler exceptions are swallowed
          (finally
            (.decrementAndGet depth)
            (locking monitor
              (.compareAndSet group nil ::ok)
              (.notifyAll monitor))))))))

(defn- with-leadership
  "Sync: leads (see lead!) until `(done?)`, checked under the monitor,
  returns non-nil, and returns that; with `once?`, returns nil after leading
  once. Waits while another thread leads. Interrupts do not cut the wait
  short; the interrupt status is set again on return. When the calling
  thread leads already (a swap! or recommit from inside the :error-handler),
  it writes at once, nested."
  [^Engine e done? once?]
  (let [^Object monitor (:monitor e)
        ^AtomicReference leader (:leader e)
        me (Thread/currentThread)]
    (loop [interrupted? false]
      (let [step (locking monitor
                   (let [outcome (done?)]
                     (cond (some? outcome) outcome
                           (nil? (.get leader)) (do (.set leader me) ::lead)
                           (identical? me (.get leader)) ::nested
                           :else (try (.wait monitor) ::again
                                      (catch InterruptedException _ ::interrupted)))))]
        (cond
          (identical? step ::again) (recur interrupted?)
          (identical? step ::interrupted) (recur true)
          (identical? step ::nested)
          (do (lead! e)
              (if once?
                (when interrupted? (.interrupt me))
                (recur interrupted?)))
          (identical? step ::lead)
          (do (let [was-interrupted? (Thread/interrupted)] ; keep interruptible I/O of a custom :write working
                (try (lead! e)
                     (finally
                       (locking monitor
                         (.set leader nil)
                         (.notifyAll monitor))
                       (when was-interrupted? (.interrupt me)))))
              (if once?
                (when interrupted? (.interrupt me))
                (recur interrupted?)))
          :else (do (when interrupted? (.interrupt me))
                    step))))))

(defn await-durable!
  "Synchronous mode: returns once the state that `propose!` gave `ticket`
  for is durable; throws when it could not be written (it is then dropped
  from memory too). With an :error-handler the state is kept instead and the
  handler told, as the original library did. An interrupt does not cut the
  wait short: the call returns (or throws) on the state's outcome, with the
  thread's interrupt status set again."
  [^Engine e ^AtomicReference ticket]
  (let [outcome (with-leadership e #(.get ticket) false)]
    (when-not (identical? outcome ::ok)
      (throw (failure-ex e outcome)))))

(defn adopt!
  "Makes `value`, stored as `version`, the newest state (it was read from
  storage). Returns the state it replaces."
  [^Engine e value version]
  (locking (:monitor e)
    (let [old (.get ^AtomicReference (:visible e))]
      (.set ^AtomicReference (:latest e) value)
      (.set ^AtomicReference (:visible e) value)
      (.set ^AtomicReference (:version e) version)
      old)))

(defn stored-version
  "The version of the durable state as this engine last saw it."
  [^Engine e]
  (.get ^AtomicReference (:version e)))

(defn load-stored
  "What the store holds now (see duratom.storage/load-stored), read while no
  commit is in flight. Throws when the engine is destroyed."
  [^Engine e]
  (let [^ReentrantLock io-lock (:io-lock e)]
    (.lock io-lock)
    (try
      (when (.get ^AtomicBoolean (:closed e)) (throw (destroyed-ex e)))
      (storage/load-stored (:store e))
      (finally (.unlock io-lock)))))

(defn reload!
  "Reads what storage holds now, while no commit is in flight; when its
  version is not the one this engine last saw, decodes it with `decode`
  (called with what duratom.storage/load-stored gives: `{:bytes :version}`)
  and adopts it. A write of this engine whose outcome was unknown and that
  landed is recognised (by its bytes): synchronous mode adopts it,
  asynchronous mode records its version and keeps the newest state, which
  was computed from it. When nothing is stored, keeps the state in memory.
  Returns [old new] when the state changed (a stored state equal to the one
  in memory is adopted as it is, version and all, but is no change), else
  nil."
  [^Engine e decode]
  (let [^ReentrantLock io-lock (:io-lock e)]
    (.lock io-lock)
    (try
      (when-not (.get ^AtomicBoolean (:closed e))
        (let [settled (settle-doubt! e)]
          (cond
            (:adopted settled) (:adopted settled)
            (and settled (not (contains? settled :stored))) nil ; its version recorded, memory holds newer
            :else
            ;; what the look at storage found (a second look could meet a
            ;; write in doubt landing, and take it for another's)
            (when-let [stored (if settled (:stored settled) (storage/load-stored (:store e)))]
              (when (not= (:version stored) (stored-version e))
                (let [new (decode stored)
                      old (adopt! e new (:version stored))]
                  ;; a new version may hold an equal state (another process
                  ;; compacted, or wrote its state again): no change to tell
                  (when-not (try (= old new) (catch Throwable _ false)) ; equals may throw
                    [old new])))))))
      (finally (.unlock io-lock)))))

(defn- vanished-ex
  "Shared mode: the stored value this duratom shared is gone."
  [^Engine e]
  (unwritten-ex e (str "the stored value is gone (destroyed through another duratom, or deleted by hand),"
                       " so this shared swap! was not written. The duratom keeps its last state in memory;"
                       " the next swap! stores its result as a new value")
                {:duratom/vanished? true}))

(defn- unresolved-conflict-ex
  "Shared mode: storage refused the commit, and reading it found the version
  this duratom already had."
  [^Engine e]
  (unwritten-ex e (str "storage refused the shared commit as a conflict, but reading it found the version"
                       " this duratom already holds; nothing was written")
                {:duratom/conflict? true}))

(defn shared-update!
  "Shared mode: a compare-and-set loop whose register is the storage itself.
  Computes `(f state)`, validates, and commits only if storage still holds
  the version this engine last saw. When another process wrote meanwhile,
  calls `(reload!)` (which must adopt! the stored state) and starts again, so
  `f` may run more than once; each retry follows a newer stored version, so
  the loop ends. When the stored value is gone, throws (data
  `:duratom/vanished? true`), and the next call creates it anew from the
  state in memory (or, should the value it saw be back, writes over that).
  Returns [old new], or nil when `f` returns `abort`. Call under the
  duratom's lock."
  [^Engine e f validate! abort reload!]
  (loop []
    (let [old (.get ^AtomicReference (:visible e))
          new (f old)]
      (when-not (identical? new abort)
        (validate! new)
        (let [version (stored-version e)
              ^AtomicBoolean vanished (:vanished e)
              encoded (volatile! nil)
              committed (try (let [t0 (System/nanoTime)
                                   enc ((:encode e) new)]
                               (vreset! encoded enc)
                               (commit-bytes! e enc t0 (if (.get vanished) :nothing (or version :nothing))))
                             (catch Throwable x
                               (note-doubt! e @encoded new x) ; a later conflict's reload! recognises it
                               (throw (failure-ex e (failed! e x)))))]
          (if committed
            (do (.set vanished false)
                (locking (:monitor e) ; commit-bytes! already recorded the version
                  (.set ^AtomicReference (:doubt e) nil)
                  (.set ^AtomicReference (:latest e) new)
                  (.set ^AtomicReference (:visible e) new)
                  (.set ^AtomicReference (:last-error e) nil)
                  (.set ^AtomicLong (:written e) (.incrementAndGet ^AtomicLong (:requested e))))
                [old new])
            (let [seen (stored-version e)]
              (.incrementAndGet ^AtomicLong (:conflicts e))
              (reload!)
              ;; Retry only when the reload learnt a newer version: a
              ;; conflict that reading storage does not explain would refuse
              ;; every retry the same way.
              (cond
                (not= seen (stored-version e)) (do (.set vanished false) (recur))
                ;; it was gone and is back as this duratom last saw it
                (.getAndSet vanished false) (recur)
                (and (some? seen) (nil? (load-stored e))) (do (.set vanished true) (throw (vanished-ex e)))
                :else (throw (unresolved-conflict-ex e))))))))))

;; ------------------------------------------------------ asynchronous mode

(declare write-loop)

(defn- wake-writer!
  "Starts a writer unless one is running (or the engine is closed)."
  [^Engine e]
  (let [^AtomicBoolean scheduled (:scheduled e)]
    (when (and (not (.get scheduled))
               (not (.get ^AtomicBoolean (:closed e)))
               (.compareAndSet scheduled false true))
      (.add writing e)
      (submit! (fn [] (write-loop e 0))))))

(defn- stop-writer!
  "Marks the writer stopped. Call holding the monitor."
  [^Engine e]
  (.set ^AtomicBoolean (:scheduled e) false)
  (.remove writing e)
  (.notifyAll ^Object (:monitor e)))

(defn- go-on?
  "Whether the writer goes round again: a state is pending, the engine is
  open, and (after a failure the :error-handler did not repair) a state
  newer than the failed one arrived. Otherwise stops the writer, and takes
  it up again if a state arrived just after: a swap! that saw the writer
  still scheduled did not wake one."
  [^Engine e ^long newer-than]
  (let [^AtomicLong requested (:requested e)
        ^AtomicLong written (:written e)
        ^AtomicBoolean closed (:closed e)
        more? #(and (> (.get requested) (.get written))
                    (> (.get requested) newer-than)
                    (not (.get closed)))]
    (locking (:monitor e)
      (or (more?)
          (do (stop-writer! e)
              (and (more?)
                   (.compareAndSet ^AtomicBoolean (:scheduled e) false true)
                   (do (.add writing e) true)))))))

(defn- handle-async-failure!
  "Calls the :error-handler with `x` on the writer thread, which stays
  scheduled meanwhile (flush! waits); a recommit from inside commits at once,
  on this thread."
  [^Engine e x]
  (let [^AtomicReference handling (:handling e)]
    (.set handling (Thread/currentThread))
    (try ((:error-handler e) x (recommit-fn e))
         (catch Throwable _ nil) ; the contract: handler exceptions are swallowed
         (finally (.set handling nil)))))

(defn- back-off!
  "Schedules the writer's next round, its `attempt`th retry, after a backoff
  that grows with it. The writer stays scheduled meanwhile (flush! waits);
  the thread is free."
  [^Engine e ^long attempt]
  (let [^AtomicReference backoff (:backoff e)
        cell (object-array 1)
        job (fn [] (when (.compareAndSet backoff (aget cell 0) nil)
                     (submit! (fn [] (write-loop e attempt)))))
        delay-ms (min max-backoff-ms (bit-shift-left 10 (min (dec attempt) 10)))]
    (locking cell
      (let [f (.schedule retries ^Runnable (fn [] (locking cell (job))) (long delay-ms) TimeUnit/MILLISECONDS)
            entry [f attempt]]
        (aset cell 0 entry)
        (.set backoff entry)))))

(defn- cut-backoff!
  "Runs a writer round waiting out its backoff now (flush!, destroy!)."
  [^Engine e]
  (when-let [[^ScheduledFuture f attempt] (.getAndSet ^AtomicReference (:backoff e) nil)]
    (when (.cancel f false)
      (submit! (fn [] (write-loop e attempt))))))

(defn- write-loop
  "The writer: writes the newest state until none is pending. On failure
  calls the :error-handler and stops unless it recommitted or newer states
  came; without one, logs and retries after a backoff (see back-off!),
  except when the state itself was refused: retrying would only encode it
  again, so it stops until a newer state comes (flush! then throws the
  refusal). `attempt`: the retries so far."
  [^Engine e ^long attempt]
  (let [^Object monitor (:monitor e)
        ^AtomicBoolean closed (:closed e)]
    (try
      (loop [attempt attempt]
        (let [[x _ failed-target] (write-newest! e)]
          (cond
            (nil? x)
            (when (go-on? e 0) (recur 0))

            (:error-handler e)
            (do (when-not (.get closed) (handle-async-failure! e x))
                ;; states up to failed-target are written only if it recommitted
                (when (go-on? e (long failed-target)) (recur 0)))

            (refusal? x)
            (do (streak-begins! e x)
                (when (go-on? e (long failed-target)) (recur 0)))

            :else
            (do (when-not (.get closed) (streak-begins! e x)) ; a write racing destroy is no failure streak
                (locking monitor
                  (.notifyAll monitor)
                  (if (.get closed)
                    (stop-writer! e)
                    (back-off! e (inc attempt))))))))
      (catch Throwable x ; our own bookkeeping failed: never die silently, never stay scheduled
        (try (failed! e x) (catch Throwable _ nil))
        (log! :warn (str "duratom: the asynchronous writer of " (where e) " stopped: " (describe x)) x)
        (locking monitor (stop-writer! e))))))

(defn- async-recommit!
  "Async recommit from outside the writer: waits for a running writer to
  stop, then starts one that writes the newest state, and waits for it.
  Returns once every state accepted before the call is durable; throws the
  failure when that writer stopped short of it."
  [^Engine e]
  (let [^Object monitor (:monitor e)
        ^AtomicBoolean scheduled (:scheduled e)]
    (locking monitor
      (let [target (.get ^AtomicLong (:requested e))]
        (loop [started? false]
          (cond
            (or (>= (.get ^AtomicLong (:written e)) target) (.get ^AtomicBoolean (:closed e))) nil
            (.get scheduled) (do (cut-backoff! e) (.wait monitor) (recur started?))
            started? (throw (failure-ex e (or (.get ^AtomicReference (:last-error e))
                                             (IllegalStateException. "duratom: the recommit did not land"))))
            (.compareAndSet scheduled false true)
            (do (.add writing e)
                (submit! (fn [] (write-loop e 0)))
                (recur true))
            :else (recur started?))))))) ; a swap! started one just now

(defn- recommit-fn
  "The `recommit` an :error-handler gets: writes the current state at once,
  as the original library did. Synchronous: as the leader (inside the
  handler's call, nested; elsewhere after waiting for the leadership); a
  failure calls the handler again. Asynchronous: on the writer thread inside
  the handler, else through the writer; a failure is thrown. Does nothing
  once the duratom is destroyed."
  [^Engine e]
  (fn recommit []
    (when-not (.get ^AtomicBoolean (:closed e))
      (cond
        (:sync? e)
        (with-leadership e (constantly nil) true)

        (identical? (Thread/currentThread) (.get ^AtomicReference (:handling e)))
        (let [[x] (write-newest! e)]
          (when x (throw (failure-ex e x))))

        :else (async-recommit! e)))))

(defn recommit!
  "Writes the newest state now, as an :error-handler's `recommit` does."
  [^Engine e]
  ((recommit-fn e)))

(defn flush!
  "Waits until every state requested before the call is durable. Returns
  true; false when `timeout-ms` (nil: no limit) passes first. Throws the last
  persistence error when the pending state will not be written: the writer
  stopped after a failure (the :error-handler did not repair it), or, with no
  :error-handler, a write of the newest state it waits for, begun after the
  call, failed (the writer retries on). While an :error-handler runs, and for a recommit it makes, it waits.
  An interrupt throws InterruptedException and changes nothing."
  [^Engine e timeout-ms]
  (let [deadline (when timeout-ms (+ (System/nanoTime) (* 1000000 (long timeout-ms))))
        ^Object monitor (:monitor e)
        ^AtomicLong failed-attempt (:failed-attempt e)
        handler? (some? (:error-handler e))]
    (locking monitor
      (let [target (.get ^AtomicLong (:requested e))
            attempts-before (.get ^AtomicLong (:attempts e))]
        (cut-backoff! e)
        (loop []
          (cond
            (or (>= (.get ^AtomicLong (:written e)) target) (.get ^AtomicBoolean (:closed e)))
            true

            (or (and (not handler?)
                     (> (.get failed-attempt) attempts-before)
                     (>= (.get ^AtomicLong (:failed-target e)) target))
                (and (not (.get ^AtomicBoolean (:scheduled e)))
                     (nil? (.get ^AtomicReference (:leader e)))
                     (some? (.get ^AtomicReference (:last-error e)))))
            (let [^Throwable x (.get ^AtomicReference (:last-error e))]
              (throw (ex-info (str "duratom: the pending state cannot be written: " (describe x))
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
        (when-let [[^ScheduledFuture f] (.getAndSet ^AtomicReference (:backoff e) nil)]
          (.cancel f false))
        (stop-writer! e))
      (storage/close! (:store e))
      (finally (.unlock io-lock)))))

(defonce ^:private shutdown-hook
  (.addShutdownHook (Runtime/getRuntime)
                    (Thread. ^Runnable (fn []
                                         (doseq [e (vec writing)]
                                           (try (flush! e 10000) (catch Throwable _ nil))))
                             "duratom-shutdown-flush")))
