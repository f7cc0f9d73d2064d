(ns duratom.outcome-unknown-test
  "A commit whose outcome is unknown (its request went out and no answer
  came), at the one interleaving no server test can force: the write lands just after the
  duratom looked at storage and found it had not. The storage is a real file
  store; only the moment is arranged, by wrapping duratom.storage's calls:
  the first commit reports an unknown outcome without writing, and the
  write is made for real (its very bytes, through the same store) right
  after the next look at storage. The backend tests (postgres-test,
  s3-test) freeze real servers for the ordinary orders."
  (:require [clojure.java.io :as io]
            [clojure.test :refer [deftest is testing]]
            [duratom.core :as d]
            [duratom.storage :as storage]
            [duratom.test-support :as ts]))

(defn- stored
  "What a fresh duratom on `path` loads: what storage holds."
  [path]
  @(d/file-atom path nil nil (assoc d/default-file-rw :commit-mode :sync)))

(defn- with-late-landing
  "Runs `(f)` with duratom.storage wrapped: the first commit is not made and
  fails as one whose outcome is unknown; the first load after that returns
  what storage held, and then makes that commit for real (so the write lands
  just after the look). Returns {:result .. :landed? ..}."
  [f]
  (let [real-commit storage/commit!
        real-load storage/load-stored
        held (atom nil)
        landed? (atom false)]
    (with-redefs [storage/commit!
                  (fn [store encoded expected last-seen]
                    (if (compare-and-set! held nil [store encoded last-seen])
                      (throw (ex-info (str "test store: commit: outcome unknown, the write may or may not have"
                                           " taken effect: no answer (arranged by the test)")
                                      {:duratom/backend :local-file :duratom/op :commit
                                       :duratom/outcome-unknown? true}))
                      (real-commit store encoded expected last-seen)))
                  storage/load-stored
                  (fn [store]
                    (let [r (real-load store)]
                      (when-let [[s enc last-seen] @held]
                        (when (compare-and-set! landed? false true)
                          (real-commit s enc nil last-seen)))
                      r))]
      {:result (f) :landed? @landed?})))

(deftest a-write-landing-after-the-look-is-never-overwritten
  (testing "synchronous: the next commit is refused, the one after adopts the landed state"
    (let [path (str (io/file (ts/temp-dir) "state.edn"))
          a (d/file-atom path nil {:n 0} (assoc d/default-file-rw :commit-mode :sync))
          seen (atom [])]
      (add-watch a :w (fn [_ _ o n] (swap! seen conj [o n])))
      (swap! a update :n inc)
      (let [{:keys [result landed?]}
            (with-late-landing
              (fn []
                (let [e1 (try (swap! a assoc :a 1) nil (catch Exception e e))
                      e2 (try (swap! a assoc :b 1) nil (catch Exception e e))]
                  [e1 e2 @a (stored path)])))
            [e1 e2 memory storage] result]
        (is landed? "the write landed after the look")
        (is (true? (:duratom/outcome-unknown? (ex-data e1))) (str e1))
        (is (re-find #"outcome unknown" (str (ex-message e1))))
        (is (some? e2) "the commit computed without the landed write is refused, not written over it")
        (is (re-find #"nothing was overwritten" (str (ex-message e2))) (str e2))
        (is (= {:n 1} memory) "the refused swap! left no trace in memory")
        (is (= {:n 1 :a 1} storage) "storage holds the landed write"))
      (is (= {:n 1 :a 1 :c 1} (swap! a assoc :c 1)) "the next swap! adopts the landed state and builds on it")
      (is (= {:n 1 :a 1 :c 1} @a (stored path)))
      (is (= [[{:n 0} {:n 1}] [{:n 1} {:n 1 :a 1}] [{:n 1 :a 1} {:n 1 :a 1 :c 1}]] @seen)
          "the watches saw the landed state adopted")
      (d/destroy a)))
  (testing "asynchronous: the writer records the landed write and stores the newest state; memory never goes back"
    (let [path (str (io/file (ts/temp-dir) "state.edn"))
          a (d/file-atom path nil {:n 0} d/default-file-rw)
          seen (atom [])]
      (add-watch a :w (fn [_ _ o n] (swap! seen conj [o n])))
      (swap! a update :n inc)
      (is (true? (d/flush! a 10000)))
      (let [{:keys [landed?]}
            (with-late-landing
              (fn []
                (swap! a assoc :a 1)
                ;; the write of {:a 1} fails; flush! either throws that or
                ;; returns once a retry stored a newer state
                (try (d/flush! a 10000) (catch Exception _ nil))
                (swap! a assoc :b 1)
                (is (= {:n 1 :a 1 :b 1} (d/refresh! a)) "refresh! keeps the newest state")
                (is (true? (d/flush! a 10000)))))]
        (is landed? "the write landed after the look"))
      (is (= {:n 1 :a 1 :b 1} @a (stored path)))
      (is (= [[{:n 0} {:n 1}] [{:n 1} {:n 1 :a 1}] [{:n 1 :a 1} {:n 1 :a 1 :b 1}]] @seen)
          "memory never went back")
      (d/destroy a))))
