(ns duratom.dir-fsync-test
  "Found by the history checker (duratom.history): a file commit whose
  directory was moved away after its rename landed failed its directory
  fsync (the directory was opened by path) and reported 'could not be
  written', so swap! threw although its state was in the file (182 of 1937
  swaps that threw, in one run). The store now opens the directory before the
  rename and fsyncs that handle; a failure after the rename is reported as
  outcome unknown, never as a plain failure."
  (:require [clojure.edn :as edn]
            [clojure.java.io :as io]
            [clojure.test :refer [deftest is]]
            [duratom.core :as d]
            [duratom.readers :as readers]
            [duratom.test-support :as ts])
  (:import (java.io File)))

(deftest a-swap-that-threw-is-not-in-the-file
  (let [dir (ts/temp-dir)
        away (File. (str dir ".away"))
        p (io/file dir "state.edn")
        dura (d/file-atom p nil #{} {:commit-mode :sync})
        rnd (java.util.Random. 11)
        outcomes (vec (for [i (range 2000)]
                        (let [swap (future (try (swap! dura conj i) nil
                                                (catch Exception e
                                                  {:message (ex-message e)
                                                   :unknown? (boolean (:duratom/outcome-unknown? (ex-data e)))})))]
                          ;; move the directory away at a random moment of the commit
                          (java.util.concurrent.locks.LockSupport/parkNanos (.nextInt rnd 400000))
                          (let [moved (.renameTo dir away)
                                e @swap]
                            (when moved (is (.renameTo away dir) "the directory moves back"))
                            {:i i :error e :moved? moved
                             :stored? (contains? (edn/read-string readers/default (slurp p)) i)}))))
        threw (filter :error outcomes)
        ;; a plain failure must leave no trace; only an unknown outcome may have landed
        kept (filter #(and (:stored? %) (not (:unknown? (:error %)))) threw)]
    (println (format "dir-fsync: %d swaps, directory moved away and back %d times, %d threw (%d outcome unknown), %d that threw are in the file"
                     (count outcomes) (count (filter :moved? outcomes)) (count threw)
                     (count (filter (comp :unknown? :error) threw)) (count (filter :stored? threw))))
    (is (< 1000 (count (filter :moved? outcomes))) "the directory really moved during most commits")
    (is (zero? (count kept))
        (str (count kept) " of " (count threw) " swaps that threw are in the file, e.g. "
             (pr-str (first kept))))
    (is (= (edn/read-string readers/default (slurp p)) @dura) "memory equals the file")
    (d/destroy dura)))
