(ns duratom.refresh-race-test
  "Found by the history checker (duratom.history): refresh! on a duratom that
  is not shared, while other threads' swaps are being committed, must not
  drop a state whose swap! returned."
  (:require [clojure.java.io :as io]
            [clojure.test :refer [deftest is testing]]
            [duratom.core :as d]
            [duratom.test-support :as ts]))

(defn- refresh-while-swapping [rw]
  (let [p (io/file (ts/temp-dir) "state.edn")
        dura (d/file-atom p nil #{} rw)
        stop (volatile! false)
        refresher (future (loop [n 0] (if @stop n (do (d/refresh! dura) (recur (inc n))))))
        returned (doall (for [t (range 4)]
                          (future (doall (for [i (range 300)]
                                           (do (swap! dura conj [t i]) [t i]))))))
        returned (set (mapcat deref returned))]
    (vreset! stop true)
    (let [refreshes @refresher]
      (is (d/flush! dura 10000))
      (let [stored @(d/file-atom p nil nil {:commit-mode :sync})
            lost (remove stored returned)]
        (is (empty? lost)
            (str (count lost) " of " (count returned) " swaps that returned are not stored ("
                 refreshes " refresh! calls meanwhile)"))
        (is (= stored @dura) "memory equals storage")))
    (d/destroy dura)))

(deftest refresh-during-sync-swaps-drops-nothing
  (refresh-while-swapping {:commit-mode :sync}))

(deftest refresh-during-async-swaps-drops-nothing
  (refresh-while-swapping {:commit-mode :duratom.core/async}))
