(ns duratom.behaviour
  "The behaviour every backend must show, as one suite run against each.

  A backend is a map:
  - `:name`          for messages;
  - `:new-location`  (fn []) a fresh location (path, row, key) nothing is stored at;
  - `:open`          (fn [location init rw]) a duratom at `location`;
  - `:default-rw`    the backend's default `:rw` map;
  - `:kw-args`       (fn [location]) the `duratom`/`duragent` keyword arguments
                     naming `location`, backed-by first (duratom.dropin-test)."
  (:require [clojure.test :refer [is testing]]
            [duratom.core :as d]
            [duratom.test-support :as ts])
  (:import (java.util.concurrent CountDownLatch Executors TimeUnit)))

(defn- sync-rw [backend] (assoc (:default-rw backend) :commit-mode :sync))

(defn- fresh
  "A new duratom at a fresh location, and that location."
  [backend init rw]
  (let [loc ((:new-location backend))]
    [((:open backend) loc init rw) loc]))

(defn- reopen [backend loc rw]
  ((:open backend) loc nil rw))

(defn- same-as-atom
  "Runs `ops` (fn [ref] results) on a clojure.core/atom and on a duratom,
  both starting at `init`; they must give the same results and end state."
  [backend rw init ops]
  (let [a (atom init)
        [dura _] (fresh backend init rw)]
    (try
      (is (= (ops a) (ops dura)))
      (is (= @a @dura))
      (finally (d/destroy dura)))))

(defn atom-semantics [backend]
  (doseq [rw [(:default-rw backend) (sync-rw backend)]]
    (testing (str (:name backend) " " (:commit-mode rw :async) ": same as clojure.core/atom")
      (same-as-atom backend rw {:n 0}
                    (fn [r]
                      [(swap! r update :n inc)
                       (swap! r update :n + 2)
                       (swap! r update :n + 2 3)
                       (swap! r update :n + 1 1 1 1)
                       (swap-vals! r assoc :a 1)
                       (swap-vals! r assoc :b 2 :c 3)
                       (reset-vals! r {:n 100})
                       (compare-and-set! r {:n 1} {:n 2})
                       (compare-and-set! r @r {:n 101})
                       (reset! r {:n 7})
                       @r]))

      (testing "validators reject like an atom, and nothing is persisted"
        (let [[dura loc] (fresh backend 1 rw)
              a (atom 1)]
          (try
            (set-validator! dura pos?)
            (set-validator! a pos?)
            (is (= (get-validator a) (get-validator dura)))
            (is (thrown-with-msg? IllegalStateException #"Invalid reference state" (swap! dura - 5)))
            (is (thrown-with-msg? IllegalStateException #"Invalid reference state" (reset! dura 0)))
            (is (thrown-with-msg? IllegalStateException #"Invalid reference state" (set-validator! dura neg?)))
            (is (= 1 @dura))
            (is (d/flush! dura))
            (is (= 1 (d/backend-snapshot dura)))
            (is (= 1 @(reopen backend loc rw)))
            (finally (d/destroy dura)))))

      (testing "watches see old and new values, as on an atom"
        (let [seen-a (atom []) seen-d (atom [])
              a (atom 0)
              [dura _] (fresh backend 0 rw)]
          (try
            (add-watch a :w (fn [k r o n] (swap! seen-a conj [k (= r a) o n])))
            (add-watch dura :w (fn [k r o n] (swap! seen-d conj [k (= r dura) o n])))
            (is (= #{:w} (set (keys (.getWatches ^clojure.lang.IRef dura)))))
            (doseq [r [a dura]]
              (swap! r inc) (reset! r 10) (swap-vals! r inc) (compare-and-set! r 11 12))
            (remove-watch a :w) (remove-watch dura :w)
            (swap! a inc) (swap! dura inc)
            (is (= @seen-a @seen-d))
            (is (= 4 (count @seen-d)))
            (finally (d/destroy dura)))))

      (testing "metadata: meta, alter-meta!, reset-meta!"
        (let [[dura _] (fresh backend 0 rw)]
          (try
            (is (nil? (meta dura)))
            (is (= {:a 1} (reset-meta! dura {:a 1})))
            (is (= {:a 1 :b 2} (alter-meta! dura assoc :b 2)))
            (is (= {:a 1 :b 2} (meta dura)))
            (finally (d/destroy dura)))))

      (testing "print-method prints like an atom"
        (let [[dura _] (fresh backend {:x 1} rw)]
          (try
            (is (re-matches #"#duratom\.core\.Duratom 0x[0-9a-f]+ \{:status :ready, :val \{:x 1\}\}" (pr-str dura)))
            (finally (d/destroy dura))))))))

(defn round-trip [backend]
  (doseq [rw [(:default-rw backend) (sync-rw backend)]]
    (testing (str (:name backend) " " (:commit-mode rw :async) ": every EDN type survives a reopen")
      (let [v (ts/sample-value)
            [dura loc] (fresh backend {} rw)]
        (try
          (reset! dura v)
          (is (d/flush! dura))
          (let [back @(reopen backend loc rw)]
            (is (= v back))
            (is (= (ts/types-of v) (ts/types-of back)) "collection types and metadata are kept"))
          (is (= v (d/backend-snapshot dura)))
          (finally (d/destroy dura)))))))

(defn init-and-storage [backend]
  (testing (str (:name backend) ": :init is a value, a fn or a delay, used only when storage is empty")
    (let [rw (sync-rw backend)
          calls (atom 0)]
      (doseq [init [{:x 1} (fn [] (swap! calls inc) {:x 1}) (delay (swap! calls inc) {:x 1})]]
        (let [[dura loc] (fresh backend init rw)]
          (try
            (is (= {:x 1} @dura))
            (is (= {:x 1} (d/backend-snapshot dura)) "init is persisted")
            (let [again ((:open backend) loc (fn [] (throw (Exception. "init must not be called"))) rw)]
              (is (= {:x 1} @again))
              (is (zero? (:commits (d/stats again))) "nothing is written when storage holds a value"))
            (finally (d/destroy dura)))))
      (is (= 2 @calls))))
  (testing (str (:name backend) ": nil init stores nothing")
    (let [[dura _] (fresh backend nil (sync-rw backend))]
      (try
        (is (nil? @dura))
        (is (nil? (d/backend-snapshot dura)))
        (finally (d/destroy dura))))))

(defn commit-modes [backend]
  (testing (str (:name backend) " sync: a swap! that returned is durable")
    (let [rw (sync-rw backend)
          [dura loc] (fresh backend 0 rw)]
      (try
        (dotimes [_ 20] (swap! dura inc))
        (is (= 20 (d/backend-snapshot dura)))
        (is (= 20 @(reopen backend loc rw)))
        (is (false? (:pending? (d/stats dura))))
        (finally (d/destroy dura)))))
  (testing (str (:name backend) " async: the last state lands, flush! says when")
    (let [rw (:default-rw backend)
          [dura loc] (fresh backend 0 rw)]
      (try
        (dotimes [_ 2000] (swap! dura inc))
        (is (true? (d/flush! dura)))
        (is (= 2000 (d/backend-snapshot dura)))
        (is (= 2000 @(reopen backend loc rw)))
        (let [s (d/stats dura)]
          (is (every? (set (keys s)) [:commits :failures :bytes-written :pending? :last-error :last-commit-nanos]))
          (is (false? (:pending? s)))
          ;; 2,000 swaps take a few milliseconds, one durable commit about as
          ;; long: a writer that wrote every state instead of the newest
          ;; pending one would need 2,000 commits.
          (is (<= 1 (:commits s) 1000) (str "states were coalesced: " (:commits s) " commits for 2000 swaps"))
          (is (pos? (:bytes-written s)))
          (is (zero? (:failures s)))
          (is (pos? (:last-commit-nanos s))))
        (finally (d/destroy dura)))))
  (testing (str (:name backend) ": :read-from :storage reads what is stored")
    (let [rw (assoc (sync-rw backend) :read-from :storage)
          [dura loc] (fresh backend {:v 1} rw)
          other (reopen backend loc (sync-rw backend))]
      (try
        (reset! other {:v 2})
        (is (= {:v 2} @dura) "deref went to storage")
        (finally (d/destroy dura))))))

(defn destroy-semantics [backend]
  (doseq [rw [(:default-rw backend) (sync-rw backend)]]
    (testing (str (:name backend) " " (:commit-mode rw :async) ": destroy")
      (let [[dura loc] (fresh backend {:x 1} rw)]
        (swap! dura assoc :y 2)
        (is (d/flush! dura))
        (d/destroy dura)
        (is (= {:x 1 :y 2} @dura) "deref still gives the last value")
        (is (thrown? IllegalStateException (swap! dura assoc :z 3)))
        (is (thrown? IllegalStateException (reset! dura 1)))
        (is (thrown? IllegalStateException (compare-and-set! dura @dura 1)))
        (is (thrown? IllegalStateException (swap-vals! dura inc)))
        (is (thrown? IllegalStateException (reset-vals! dura 1)))
        (is (nil? (d/destroy dura)) "destroy twice is harmless")
        (let [again (reopen backend loc rw)]
          (is (nil? @again) "the backing resource is gone")
          (d/destroy again)))))
  (testing (str (:name backend) ": with-open closes (destroys)")
    (let [loc ((:new-location backend))]
      (with-open [dura ((:open backend) loc 1 (sync-rw backend))]
        (swap! dura inc))
      (is (nil? @(reopen backend loc (sync-rw backend)))))))

(defn concurrency [backend]
  (doseq [rw [(:default-rw backend) (sync-rw backend)]]
    (testing (str (:name backend) " " (:commit-mode rw :async) ": 8 threads x 1,000 increments")
      (let [[dura loc] (fresh backend 0 rw)
            pool (Executors/newFixedThreadPool 8)
            start (CountDownLatch. 1)
            f-calls (atom 0)]
        (try
          (let [tasks (doall (for [_ (range 8)]
                               (.submit pool ^Callable (fn []
                                                         (.await start)
                                                         (dotimes [_ 1000]
                                                           (swap! dura (fn [n] (swap! f-calls inc) (inc n))))))))]
            (.countDown start)
            (doseq [t tasks] (.get ^java.util.concurrent.Future t 5 TimeUnit/MINUTES)))
          (is (= 8000 @dura))
          (is (= 8000 @f-calls) "f runs once per swap! in one process")
          (is (d/flush! dura))
          (is (= 8000 @(reopen backend loc rw)))
          (finally
            (.shutdown pool)
            (d/destroy dura)))))))

(defn error-handler-and-recommit
  "`break!` makes the backend's commits fail, `mend!` undoes that."
  [backend break! mend!]
  (testing (str (:name backend) " sync without handler: swap! throws, memory keeps the durable value")
    (let [rw (sync-rw backend)
          [dura loc] (fresh backend 1 rw)]
      (try
        (break! loc)
        (let [e (try (swap! dura inc) nil (catch Exception e e))]
          (is (some? e) "the failed commit is visible")
          (is (= (:duratom/backend (ex-data e)) (keyword (:name backend))))
          (is (= 1 @dura))
          (is (= 1 (:failures (d/stats dura))))
          (mend! loc)
          ;; a commit whose outcome was unknown (a frozen server may apply
          ;; it when it thaws) is adopted by the next swap! if it landed
          (is (contains? (if (:duratom/outcome-unknown? (ex-data e)) #{2 3} #{2}) (swap! dura inc)))
          (is (= @dura (d/backend-snapshot dura)) "memory equals storage"))
        (finally (d/destroy dura)))))
  (testing (str (:name backend) " sync with handler: the handler gets the error and a working recommit")
    (let [errors (atom [])
          recommits (atom [])
          rw (assoc (sync-rw backend) :error-handler (fn [e recommit]
                                                       (swap! errors conj e)
                                                       (swap! recommits conj recommit)
                                                       (throw (Exception. "handler exceptions are swallowed"))))
          [dura loc] (fresh backend 1 rw)]
      (try
        (break! loc)
        (is (= 2 (swap! dura inc)) "as in the original, the state is kept and the handler told")
        (is (= 1 (count @errors)))
        (is (:pending? (d/stats dura)))
        (mend! loc)
        ((first @recommits))
        (is (true? (d/flush! dura 10000)))
        (is (= 2 (d/backend-snapshot dura)))
        (finally (d/destroy dura)))))
  (testing (str (:name backend) " async without handler: kept and retried; flush! shows the failure")
    (let [rw (:default-rw backend)
          [dura loc] (fresh backend 1 rw)]
      (try
        (break! loc)
        (swap! dura inc)
        (is (thrown? Exception (d/flush! dura 60000)) "a write of the pending state failed meanwhile")
        (is (:pending? (d/stats dura)))
        (is (some? (:last-error (d/stats dura))))
        (mend! loc)
        (is (true? (d/flush! dura 10000)))
        (is (= 2 (d/backend-snapshot dura)))
        (finally (d/destroy dura))))))

(defn with-meta-shares-everything-but-meta
  "`with-meta` gives a duratom with that metadata that shares the state, the
  storage, the validator, the watches and destruction with the original."
  [backend]
  (doseq [rw [(:default-rw backend) (sync-rw backend)]]
    (testing (str (:name backend) " " (:commit-mode rw :async) ": with-meta")
      (let [[dura loc] (fresh backend {:n 0} rw)
            _ (reset-meta! dura {:original true})
            other (with-meta dura {:tag :other})
            seen (atom [])]
        (try
          (is (instance? (class dura) other))
          (is (= {:tag :other} (meta other)))
          (is (= {:original true} (meta dura)) "the original keeps its metadata")
          (add-watch dura :w (fn [_ r o n] (swap! seen conj [(identical? r dura) o n])))
          (swap! other update :n inc)
          (is (= {:n 1} @dura @other) "one state")
          (swap! dura update :n inc)
          (is (= {:n 2} @other))
          (is (= [[false {:n 0} {:n 1}] [true {:n 1} {:n 2}]] @seen)
              "a watch added on one fires for swaps on either")
          (set-validator! other #(<= (:n %) 2))
          (is (thrown? IllegalStateException (swap! dura update :n inc)) "one validator")
          (is (d/flush! other))
          (is (= {:n 2} (d/backend-snapshot other) @(reopen backend loc rw)) "one storage")
          (d/destroy other)
          (is (thrown? IllegalStateException (reset! dura {:n 0})) "destroying one destroys both")
          (is (= {:n 2} @dura))
          (finally (d/destroy dura)))))))

(defn refusals-name-the-store
  "A state the codec refuses (too big for `:max-bytes`, or holding a value
  EDN cannot carry) throws naming the backend, the resource and the path in
  the state; nothing stored changes."
  [backend]
  (testing (str (:name backend) ": refused states name the store and leave it as it was")
    (let [[dura _] (fresh backend {:x 1} (assoc (sync-rw backend) :max-bytes 64))]
      (try
        (doseq [[what f kind path] [["too big" #(assoc % :big (apply str (repeat 100 "x"))) :max-bytes nil]
                                    ["a fn" #(assoc % :f (fn [])) nil [:f]]]]
          (let [e (try (swap! dura f) nil (catch clojure.lang.ExceptionInfo e e))
                data (ex-data e)]
            (is (some? e) (str what ": refused"))
            (is (keyword? (:duratom/backend data)) (str what ": " data))
            (is (string? (:duratom/resource data)) (str what ": " data))
            (is (.contains (str (ex-message e)) (str (:duratom/resource data))) (str what ": " (ex-message e)))
            (when kind (is (= kind (:duratom/refused data)) (str what ": " data)))
            (when path (is (= path (:duratom/path data)) (str what ": " data)))))
        (is (= {:x 1} @dura (d/backend-snapshot dura)) "memory and storage hold the last good state")
        (finally (d/destroy dura))))))

(defn run-all
  "Every behaviour above against `backend`."
  [backend]
  (atom-semantics backend)
  (round-trip backend)
  (init-and-storage backend)
  (commit-modes backend)
  (destroy-semantics backend)
  (concurrency backend)
  (refusals-name-the-store backend)
  (with-meta-shares-everything-but-meta backend))
