(ns duratom.engine-test
  "The commit engine under faults and misuse, against the real file system:
  a state that cannot be hashed or encoded, interrupts, the :error-handler's
  semantics (as the original library had them), the logging of asynchronous
  failures, and the outcome a synchronous swap! learns (its own group's)."
  (:require [clojure.java.io :as io]
            [clojure.string :as str]
            [clojure.test :refer [deftest is testing]]
            [duratom.core :as d]
            [duratom.rw :as rw]
            [duratom.test-support :as ts])
  (:import (java.io File)
           (java.util.concurrent CountDownLatch CyclicBarrier Executors Future TimeUnit)
           (java.util.concurrent.locks Lock ReentrantLock)
           (java.util.logging Handler Level Logger LogRecord)))

(def ^:private sync-rw (assoc d/default-file-rw :commit-mode :sync))

(defn- fresh-path ^File [] (io/file (ts/temp-dir) "state.edn"))

(defn- open [path init rw] (d/file-atom path nil init rw))

(defn- stored
  "What a fresh duratom on `path` loads: what storage holds."
  [path]
  (let [again (d/file-atom path nil nil sync-rw)]
    @again))

(defn- move! [^File from ^File to]
  (when-not (.renameTo from to)
    (throw (ex-info (str "could not move " from " to " to) {}))))

;; Breaking a file store as root: permission bits do not stop root, but a
;; directory that is not there does.
(defn- break! [^File path] (move! (.getParentFile path) (File. (str (.getParentFile path) ".away"))))
(defn- mend! [^File path] (move! (File. (str (.getParentFile path) ".away")) (.getParentFile path)))

(defn- poison
  "A state whose hashCode throws (it realises a lazy seq that throws), and
  which no encoder can write."
  []
  {:poison (lazy-seq (throw (ex-info "poison: this lazy seq throws when realised" {})))})

(defn- within
  "Runs `f` on another thread; its result, or ::timeout after `secs`: a
  wedged engine fails the test instead of hanging it."
  [secs f]
  (let [fut (future (f))
        r (deref fut (* 1000 secs) ::timeout)]
    (when (= ::timeout r) (future-cancel fut))
    r))

;; ------------------------------------------------------------------- wedge

(deftest a-failure-never-wedges-the-engine
  (is (thrown? Exception (hash (poison))) "premise: hashing the state throws")
  (testing "sync: the poisoned swap! throws and leaves no trace; 100 swaps after it work"
    (let [path (fresh-path)
          dura (open path {:n 0} sync-rw)]
      (is (= :done (within 60 (fn []
                                (is (thrown? Exception (reset! dura (poison))))
                                (is (= {:n 0} @dura) "memory kept the last durable state")
                                (is (thrown? Exception (swap! dura merge (poison))))
                                (dotimes [_ 100] (swap! dura update :n inc))
                                (is (true? (d/flush! dura)))
                                :done))))
      (is (= {:n 100} @dura))
      (is (= {:n 100} (stored path)))
      (is (nil? (:last-error (d/stats dura))) ":last-error clears once a state lands")
      (d/destroy dura)))
  (testing "sync: a StackOverflowError while encoding (nesting far too deep) is a failure like any"
    (let [path (fresh-path)
          dura (open path {:n 0} sync-rw)
          deep (reduce (fn [acc _] (list acc)) :bottom (range 200000))]
      (is (= :done (within 60 (fn []
                                (is (thrown? Throwable (reset! dura {:deep deep})))
                                (dotimes [_ 100] (swap! dura update :n inc))
                                :done))))
      (is (= {:n 100} (stored path)))
      (d/destroy dura)))
  (testing "sync and async: an OutOfMemoryError from the encoder, and a state whose equals throws"
    (let [oom-rw (assoc d/default-file-rw
                        :write (fn [file value]
                                 (if (:oom value)
                                   (throw (OutOfMemoryError. "test: the encoder ran out of memory"))
                                   (rw/write-edn-file file value))))
          odd (reify Object
                (equals [_ _] (throw (IllegalStateException. "equals throws")))
                (hashCode [_] (throw (IllegalStateException. "hashCode throws")))
                (toString [_] "odd"))]
      (doseq [rw [(assoc oom-rw :commit-mode :sync) oom-rw]]
        (let [path (fresh-path)
              sync? (= :sync (:commit-mode rw))
              dura (open path {:n 0} rw)]
          (is (= :done (within 60 (fn []
                                    (if sync?
                                      (is (thrown? Exception (swap! dura assoc :oom true)))
                                      (swap! dura assoc :oom true))
                                    ;; whether the encoder takes it or refuses it, nothing may hang
                                    (try (swap! dura assoc :odd odd) (catch Exception _ nil))
                                    (dotimes [_ 100] (swap! dura #(-> % (dissoc :oom :odd) (update :n inc))))
                                    (is (true? (d/flush! dura 30000)))
                                    :done))))
          (is (= {:n 100} (stored path)) (str "mode " (:commit-mode rw :async)))
          (d/destroy dura)))))
  (testing "sync: 4 threads swap while one poisons now and then; every call ends"
    (let [path (fresh-path)
          dura (open path {:n 0} sync-rw)
          pool (Executors/newFixedThreadPool 4)
          outcomes (atom {:ok 0 :threw 0})
          tasks (doall (for [t (range 4)]
                         (.submit pool ^Callable
                                  (fn []
                                    (dotimes [i 100]
                                      (try (if (and (zero? t) (zero? (mod i 10)))
                                             (swap! dura merge (poison))
                                             (swap! dura update :n inc))
                                           (swap! outcomes update :ok inc)
                                           (catch Exception _ (swap! outcomes update :threw inc))))))))]
      (try
        (doseq [^Future f tasks] (.get f 120 TimeUnit/SECONDS))
        (is (= 400 (+ (:ok @outcomes) (:threw @outcomes))))
        (is (<= 10 (:threw @outcomes)) "every poisoned swap! threw")
        (is (= @dura (stored path)) "memory is what is stored")
        (is (not (contains? @dura :poison)))
        (finally (.shutdownNow pool) (d/destroy dura)))))
  (testing "async: the writer survives the poisoned state; 100 swaps later the newest lands"
    (let [path (fresh-path)
          dura (open path {:n 0} d/default-file-rw)]
      (reset! dura (poison))
      (dotimes [i 100] (swap! dura (fn [_] {:n (inc i)})))
      (is (true? (within 60 #(d/flush! dura 30000))))
      (is (= {:n 100} (stored path)))
      (is (nil? (:last-error (d/stats dura))))
      (d/destroy dura)))
  (testing "shared: the poisoned swap! throws, 100 swaps after it work"
    (let [path (fresh-path)
          dura (open path {:n 0} {:shared? true})]
      (is (= :done (within 60 (fn []
                                (is (thrown? Exception (reset! dura (poison))))
                                (is (= {:n 0} @dura))
                                (dotimes [_ 100] (swap! dura update :n inc))
                                :done))))
      (is (= {:n 100} (stored path)))
      (d/destroy dura))))

;; -------------------------------------------------------------- interrupts

(deftest interrupts-never-lose-or-keep-the-wrong-state
  (testing "8 threads x 300 sync swaps, random interrupts and some poisoned groups; then a reopen"
    (let [path (fresh-path)
          dura (open path {:ids #{}} sync-rw)
          threads 8
          per-thread 300
          returned (atom #{})
          threw (atom #{})
          interrupted-returns (atom 0)
          unexpected (atom [])
          start (CyclicBarrier. (inc threads))
          running (CountDownLatch. threads)
          workers (vec (for [t (range threads)]
                         (Thread.
                          ^Runnable
                          (fn []
                            (.await start)
                            (.countDown running)
                            (dotimes [i per-thread]
                              (let [id [t i]
                                    poisoned? (and (= t 0) (zero? (mod i 25)))]
                                (try
                                  (swap! dura (fn [s]
                                                (cond-> (update s :ids conj id)
                                                  poisoned? (merge (poison)))))
                                  (swap! returned conj id)
                                  (catch Exception _ (swap! threw conj id))
                                  (catch Throwable x (swap! unexpected conj x))))
                              ;; an interrupt during the swap! is kept for us to see
                              (when (Thread/interrupted) (swap! interrupted-returns inc)))))))
          done (atom false)
          interrupter (Thread. ^Runnable
                               (fn []
                                 (let [rnd (java.util.Random. 42)]
                                   (while (not @done)
                                     (.interrupt ^Thread (nth workers (.nextInt rnd threads)))
                                     (Thread/yield)))))]
      (doseq [^Thread w workers] (.start w))
      (.await start)
      (.await running) ; no interrupt lands in the barrier
      (.start interrupter)
      (doseq [^Thread w workers] (.join w 300000))
      (reset! done true)
      (.join interrupter)
      (is (every? #(not (.isAlive ^Thread %)) workers))
      (is (empty? @unexpected))
      (is (= (* threads per-thread) (+ (count @returned) (count @threw))))
      (is (pos? @interrupted-returns) "some swaps were interrupted and returned with the status set again")
      (is (<= 12 (count @threw)) "every poisoned swap! threw")
      (let [on-disk (:ids (stored path))
            in-memory (:ids @dura)]
        (is (= @returned on-disk) "every swap! that returned is stored, none that threw")
        (is (= on-disk in-memory) "memory is what is stored")
        (is (empty? (filter on-disk @threw))))
      (d/destroy dura)))
  (testing "an interrupted flush! throws InterruptedException and changes nothing"
    (let [path (fresh-path)
          dura (open path 1 d/default-file-rw)]
      (break! path)
      (try
        (swap! dura inc)
        (.interrupt (Thread/currentThread))
        (is (thrown? InterruptedException (d/flush! dura)))
        (is (= 2 @dura))
        (is (:pending? (d/stats dura)))
        (finally (mend! path)))
      (is (true? (d/flush! dura 30000)))
      (is (= 2 (stored path)))
      (d/destroy dura)))
  (testing "a sync swap! by an already interrupted thread returns once durable, status kept"
    (let [path (fresh-path)
          dura (open path 1 sync-rw)]
      (.interrupt (Thread/currentThread))
      ;; read the status before clojure.test's reporting (its STM may clear it)
      (let [result (swap! dura inc)
            still-interrupted? (Thread/interrupted)]
        (is (= 2 result))
        (is still-interrupted?))
      (is (= 2 (stored path)))
      (d/destroy dura))))

;; ----------------------------------------------------------- error handler

(deftest error-handler-as-in-the-original
  (testing "sync: recommit inside the handler commits at once; when swap! returns it is durable"
    (let [path (fresh-path)
          errors (atom [])
          dura (open path {:x 1 :y 2}
                     (assoc sync-rw :error-handler (fn [e recommit]
                                                     (swap! errors conj e)
                                                     (mend! path)
                                                     (recommit))))]
      (break! path)
      (is (= {:x 2 :y 2} (swap! dura update :x inc)))
      (is (= {:x 2 :y 2} (stored path)) "durable as swap! returned, no flush!")
      (break! path)
      (is (= {:x 2 :y 3} (swap! dura update :y inc)))
      (is (= {:x 2 :y 3} (stored path)))
      (is (= 2 (count @errors)))
      (is (every? #(= :local-file (:duratom/backend (ex-data %))) @errors))
      (is (false? (:pending? (d/stats dura))))
      (d/destroy dura)))
  (testing "sync: a failed recommit calls the handler again, inside the first call"
    (let [path (fresh-path)
          calls (atom 0)
          dura (open path 0 (assoc sync-rw :error-handler (fn [_ recommit]
                                                            (when (= 3 (swap! calls inc)) (mend! path))
                                                            (recommit))))]
      (break! path)
      (is (= 1 (swap! dura inc)))
      (is (= 3 @calls))
      (is (= 1 (stored path)))
      (d/destroy dura)))
  (testing "sync: without a recommit the state is kept in memory (as the original), flush! says it is not written"
    (let [path (fresh-path)
          errors (atom 0)
          dura (open path 1 (assoc sync-rw :error-handler (fn [_ _] (swap! errors inc))))]
      (break! path)
      (try
        (is (= 2 (swap! dura inc)))
        (is (= 2 @dura))
        (is (= 1 @errors))
        (is (thrown? Exception (d/flush! dura)))
        (finally (mend! path)))
      (is (= 1 (stored path)))
      (is (= 3 (swap! dura inc)) "the next swap! writes the kept state's successor")
      (is (= 3 (stored path)))
      (d/destroy dura)))
  (testing "sync: a swap! from inside the handler does not deadlock"
    (let [path (fresh-path)
          dura-ref (promise)
          dura (open path 1 (assoc sync-rw :error-handler (fn [_ _]
                                                            (mend! path)
                                                            (swap! @dura-ref + 10))))]
      (deliver dura-ref dura)
      (break! path)
      (is (= 2 (within 60 #(swap! dura inc))))
      (is (= 12 @dura))
      (is (= 12 (stored path)))
      (d/destroy dura)))
  (testing "async: flush! waits while the handler runs and for its recommit"
    (let [path (fresh-path)
          entered (CountDownLatch. 1)
          release (CountDownLatch. 1)
          errors (atom 0)
          dura (open path 1 (assoc d/default-file-rw
                                   :error-handler (fn [_ recommit]
                                                    (swap! errors inc)
                                                    (.countDown entered)
                                                    (.await release)
                                                    (mend! path)
                                                    (recommit))))]
      (break! path)
      (swap! dura inc)
      (is (.await entered 60 TimeUnit/SECONDS))
      ;; the handler is running now; flush! must wait for it, not throw the
      ;; error it is recovering from: release the handler only once the
      ;; flushing thread is parked in flush!'s wait
      (let [flusher (promise)
            flushed (future (deliver flusher (Thread/currentThread)) (d/flush! dura 60000))
            ^Thread t @flusher]
        (while (not= java.lang.Thread$State/TIMED_WAITING (.getState t)) (Thread/onSpinWait))
        (.countDown release)
        (is (true? (deref flushed 60000 ::timeout)) "not the error the handler is recovering from"))
      (is (= 2 (stored path)))
      (is (= 1 @errors))
      (is (nil? (:last-error (d/stats dura))))
      (d/destroy dura)))
  (testing "async: without a recommit flush! throws (the state will not be written); the next swap! writes"
    (let [path (fresh-path)
          errors (atom 0)
          dura (open path 1 (assoc d/default-file-rw :error-handler (fn [_ _] (swap! errors inc))))]
      (break! path)
      (try
        (swap! dura inc)
        (is (thrown? Exception (d/flush! dura 60000)))
        (is (= 1 @errors) "the handler was told once; nothing retries on its own")
        (finally (mend! path)))
      (swap! dura inc)
      (is (true? (d/flush! dura 60000)))
      (is (= 3 (stored path)))
      (d/destroy dura)))
  (testing "async: a recommit that fails throws to the handler (as the original's did)"
    (let [path (fresh-path)
          seen (atom [])
          dura (open path 1 (assoc d/default-file-rw
                                   :error-handler (fn [_ recommit]
                                                    (swap! seen conj
                                                           (try (recommit) :recommitted
                                                                (catch Exception _ :recommit-threw))))))]
      (break! path)
      (try
        (swap! dura inc)
        (is (thrown? Exception (d/flush! dura 60000)))
        (is (= [:recommit-threw] @seen))
        (finally (mend! path)))
      (d/destroy dura))))

;; ----------------------------------------------------------------- logging

;; java.util.logging holds its loggers weakly: a handler added to a logger
;; nobody references is lost when that logger is collected, and the engine's
;; next look-up gets a fresh logger without it. This var keeps it alive.
(defonce ^:private engine-logger (Logger/getLogger "duratom.engine"))

(defn- capture-log
  "Adds a java.util.logging handler to logger `duratom.engine`; returns
  [records-atom handler]. tools.logging (on the test classpath) logs through
  java.util.logging here, as System.Logger does by default."
  []
  (let [records (atom [])
        h (proxy [Handler] []
            (publish [^LogRecord r] (swap! records conj r))
            (flush [])
            (close []))]
    (.addHandler ^Logger engine-logger h)
    [records h]))

(deftest unhandled-async-failures-are-logged-once-per-streak
  (let [[records h] (capture-log)
        path (fresh-path)
        dura (open path 1 d/default-file-rw)
        mine (fn [] (filter #(str/includes? (.getMessage ^LogRecord %) (str path)) @records))]
    (try
      (break! path)
      (try
        (swap! dura inc)
        ;; wait until several writes have failed
        (loop [n 0]
          (when (and (< (:failures (d/stats dura)) 3) (< n 100))
            (try (d/flush! dura 5000) (catch Exception _ nil))
            (recur (inc n))))
        (is (<= 3 (:failures (d/stats dura))))
        (is (some? (:last-error (d/stats dura))))
        (finally (mend! path)))
      (is (true? (d/flush! dura 60000)))
      (is (nil? (:last-error (d/stats dura))) ":last-error clears once the state lands")
      (let [[begin end & more] (mine)]
        (is (= Level/WARNING (.getLevel ^LogRecord begin)))
        (is (str/includes? (.getMessage ^LogRecord begin) "fail"))
        (is (= Level/INFO (.getLevel ^LogRecord end)))
        (is (str/includes? (.getMessage ^LogRecord end) "work again"))
        (is (empty? more) "once when the streak begins, once when it ends"))
      (finally
        (.removeHandler ^Logger engine-logger h)
        (d/destroy dura)))))

(deftest without-tools-logging-it-logs-through-the-system-logger
  (let [path (fresh-path)
        cp (->> (str/split (System/getProperty "java.class.path") #":")
                (remove #(str/includes? % "tools.logging"))
                (str/join ":"))
        code (pr-str
              `(do (require '[duratom.core :as ~'d])
                   (let [records# (atom [])
                         h# (proxy [java.util.logging.Handler] []
                              (publish [r#] (swap! records# conj (.getMessage ^java.util.logging.LogRecord r#)))
                              (flush [])
                              (close []))
                         path# (java.io.File. ~(str path))
                         dir# (.getParentFile path#)
                         away# (java.io.File. (str dir# ".away"))
                         ;; held to the end: loggers are weakly referenced
                         logger# (java.util.logging.Logger/getLogger "duratom.engine")]
                     (.addHandler logger# h#)
                     (let [dura# (duratom.core/file-atom path# nil 1 duratom.core/default-file-rw)]
                       (.renameTo dir# away#)
                       (swap! dura# inc)
                       (try (duratom.core/flush! dura# 10000) (catch Exception _# nil))
                       (.renameTo away# dir#)
                       (duratom.core/flush! dura# 10000)
                       (println "TOOLS-LOGGING" (some? (find-ns 'clojure.tools.logging)))
                       (println "RECORDS" (count @records#))
                       (doseq [m# @records#] (println "RECORD" m#))
                       (.removeHandler logger# h#)
                       (shutdown-agents)))))
        p (-> (ProcessBuilder. ^java.util.List
                               [(str (System/getProperty "java.home") "/bin/java") "-cp" cp "clojure.main" "-e" code])
              (.redirectErrorStream true)
              (.start))
        out (slurp (.getInputStream p))]
    (.waitFor p)
    (is (str/includes? out "TOOLS-LOGGING false") out)
    (is (str/includes? out "RECORDS 2") out)
    (is (str/includes? out (str "RECORD duratom: asynchronous writes to local-file " path " fail")) out)))

;; ---------------------------------------------------------------- :rw check

(deftest rw-must-be-a-map-or-nil
  (let [path (fresh-path)]
    (doseq [bad ["sync" :sync [:commit-mode :sync] 42]]
      (is (thrown-with-msg? IllegalArgumentException #":rw"
                            (d/file-atom path nil 1 bad)))
      (is (thrown-with-msg? IllegalArgumentException #":rw"
                            (d/duratom :local-file :file-path path :init 1 :rw bad)))
      (is (thrown-with-msg? IllegalArgumentException #":rw"
                            (d/duratom :local-file :file-path path :init 1 :rw bad :shared? true))))
    (is (not (.exists path)) "nothing was created")
    (let [ok (d/file-atom path nil 1 nil)]
      (is (= 1 @ok) "nil means the default")
      (d/destroy ok))))

;; ------------------------------------------- a waiter learns its own outcome

(defn- gated-lock
  "A Lock whose unlock, on the thread `(gate?)` names, waits for `go` after
  unlocking: it holds that thread between propose! and await-durable!."
  ^Lock [gate? ^CountDownLatch parked ^CountDownLatch go]
  (let [l (ReentrantLock.)]
    (reify Lock
      (lock [_] (.lock l))
      (lockInterruptibly [_] (.lockInterruptibly l))
      (tryLock [_] (.tryLock l))
      (tryLock [_ t u] (.tryLock l t u))
      (newCondition [_] (.newCondition l))
      (unlock [_]
        (.unlock l)
        (when (gate?)
          (.countDown parked)
          (.await go))))))

(deftest a-waiter-learns-the-outcome-of-its-own-group
  ;; A's state is accepted; before A waits, B's write fails (the directory
  ;; is gone; this drops A's state too) and C's later group lands. A must throw: its state
  ;; is in neither memory nor storage. (Checking a count of acknowledged
  ;; states instead would let A return.)
  (let [path (fresh-path)
        a-thread (promise)
        parked (CountDownLatch. 1)
        go (CountDownLatch. 1)
        lock (gated-lock #(identical? (Thread/currentThread) (deref a-thread 0 nil)) parked go)
        dura (d/file-atom path lock {:ids #{}} sync-rw)
        a (future (deliver a-thread (Thread/currentThread))
                  (try (swap! dura update :ids conj :a) :returned
                       (catch Exception _ :threw)))]
    (is (.await parked 60 TimeUnit/SECONDS) "A's state is accepted, A is held before it waits")
    (break! path)
    (try
      (is (thrown? Exception (swap! dura update :ids conj :b)) "B's group fails")
      (finally (mend! path)))
    (is (= {:ids #{:c}} (swap! dura update :ids conj :c)) "C's group lands, built without A's state")
    (.countDown go)
    (is (= :threw (deref a 60000 :timeout)) "A learns that its group failed")
    (is (= {:ids #{:c}} @dura))
    (is (= {:ids #{:c}} (stored path)))
    (d/destroy dura)))
