(ns duratom.shared
  "Shared mode, as one suite run against each backend: several JVM processes
  swap! the same duratom and no update is lost.

  A backend for this suite is the map of duratom.behaviour plus
  `:child-open-code`: (fn [location]) Clojure source that evaluates, in a
  child JVM, to a shared duratom at `location`."
  (:require [clojure.java.io :as io]
            [clojure.string :as str]
            [clojure.test :refer [is testing]]
            [duratom.core :as d]
            [duratom.test-support :as ts])
  (:import (java.io BufferedReader InputStreamReader)
           (java.util.concurrent TimeUnit)))

(def ^:private processes 3)
(def ^:private threads 2)
(def ^:private per-thread 200)

(defn- run-children
  "Starts `processes` child JVMs, each running `body-code` (which sees `dura`,
  `pid` and the thread number `t`) in 2 threads. When every child is done,
  tells them all to `refresh!` and print the result. Returns their stdout
  lines."
  [backend loc body-code]
  (let [code (str "(require 'duratom.core)"
                  "(let [dura " ((:child-open-code backend) loc) "]"
                  "  (let [pid (Long/parseLong (System/getProperty \"duratom.test.pid\"))"
                  "        go (fn [t] " body-code ")"
                  "        fs (mapv #(future (go %)) (range " threads "))]"
                  "    (run! deref fs)"
                  "    (println \"done\") (flush)"
                  "    (read-line)" ; wait until every process is done
                  "    (println \"final\" (pr-str (duratom.core/refresh! dura)))"
                  "    (println \"conflicts\" (:conflicts (duratom.core/stats dura)))"
                  "    (shutdown-agents)))")
        children (mapv #(ts/child-jvm code :jvm-opts [(str "-Dduratom.test.pid=" %)]) (range processes))
        readers (mapv #(BufferedReader. (InputStreamReader. (.getInputStream ^Process %))) children)
        before (mapv (fn [^BufferedReader r]
                       (loop [acc []]
                         (let [line (.readLine r)]
                           (if (or (nil? line) (= "done" line)) (conj acc line) (recur (conj acc line))))))
                     readers)]
    (is (every? #(= "done" (peek %)) before) "every child finished its swaps")
    (doseq [^Process p children]
      (doto (.getOutputStream p) (.write (.getBytes "go\n")) (.flush)))
    (mapv (fn [^Process p ^BufferedReader r lines]
            (let [after (doall (line-seq r))]
              (is (.waitFor p 5 TimeUnit/MINUTES))
              (is (zero? (.exitValue p)) "the child process succeeded")
              (into lines after)))
          children readers before)))

(defn- parse-final [lines]
  (some #(when (str/starts-with? % "final ") (read-string (subs % 6))) lines))

(defn three-processes-no-lost-update [backend]
  (testing (str (:name backend) " shared: 3 processes x 2 threads x 200 increments")
    (let [loc ((:new-location backend))
          dura ((:open backend) loc 0 {:shared? true})
          t0 (System/nanoTime)
          outputs (run-children backend loc (str "(dotimes [_ " per-thread "] (swap! dura inc))"))
          secs (/ (- (System/nanoTime) t0) 1e9)
          total (* processes threads per-thread)
          conflicts (reduce + (keep #(some (fn [l] (when (str/starts-with? l "conflicts ")
                                                     (Long/parseLong (subs l 10)))) %)
                                    outputs))]
      (println (format "%s shared: %d increments by %d processes in %.1f s (including JVM start), %d conflicts (%.0f%% retried)"
                       (:name backend) total processes secs conflicts (* 100.0 (/ conflicts total))))
      (is (= total (d/refresh! dura)) "the stored value")
      (is (= total (d/backend-snapshot dura)))
      (doseq [lines outputs]
        (is (= total (parse-final lines)) "each process's final refresh!"))
      (d/destroy dura))))

(defn three-processes-keep-order [backend]
  (testing (str (:name backend) " shared: every process's conj lands once, in its own order")
    (let [loc ((:new-location backend))
          dura ((:open backend) loc [] {:shared? true})
          n 50
          _ (run-children backend loc (str "(dotimes [i " n "] (swap! dura conj [pid t i]))"))
          v (d/refresh! dura)]
      (is (= (* processes threads n) (count v)))
      (is (= (count v) (count (set v))) "no pair twice")
      (doseq [p (range processes) t (range threads)]
        (is (= (range n) (map #(nth % 2) (filter #(= [p t] (subvec % 0 2)) v)))
            (str "process " p " thread " t " in its own order")))
      (d/destroy dura))))

(defn refresh-and-watches [backend]
  (testing (str (:name backend) " shared: refresh! and watches see another process's write")
    (let [loc ((:new-location backend))
          dura ((:open backend) loc {:n 0} {:shared? true})
          seen (atom [])]
      (add-watch dura :w (fn [_ _ o n] (swap! seen conj [o n])))
      (run-children backend loc "(when (zero? t) (swap! dura update :n + 10))")
      (is (= {:n 0} @dura) "deref stays local")
      (is (= {:n (* 10 processes)} (d/refresh! dura)))
      (is (= [[{:n 0} {:n (* 10 processes)}]] @seen))
      (testing "a swap! after another process wrote builds on its state"
        (let [other ((:open backend) loc nil {:shared? true})]
          (swap! other update :n inc)
          (is (= {:n (inc (* 10 processes))} (swap! dura update :n + 0)))
          (is (= {:n (inc (* 10 processes))} @dura))
          (d/destroy other)))
      (d/destroy dura))))

(defn shared-mode-commits-synchronously-over-the-default-rw
  "The default `:rw` maps say `:commit-mode :duratom.core/async` (as the
  original's did); `:shared? true` over one, or over an explicit
  asynchronous mode, is shared mode, whose commits are synchronous."
  [backend]
  (testing (str (:name backend) ": :shared? true over an asynchronous :commit-mode is synchronous shared mode")
    (doseq [rw [(assoc (:default-rw backend) :shared? true)
                {:shared? true :commit-mode :duratom.core/async}]]
      (let [loc ((:new-location backend))
            dura ((:open backend) loc 0 rw)
            other ((:open backend) loc 0 {:shared? true})]
        (try
          (is (= :sync (:commit-mode (d/stats dura))))
          (is (= 1 (swap! dura inc)))
          (is (= 1 (d/backend-snapshot dura)) "stored when swap! returns")
          (is (= 2 (swap! other inc)) "another duratom on the same storage builds on it")
          (is (= 3 (swap! dura inc)) "and this one on that")
          (finally (d/destroy dura)))))))

(defn vanished-value-ends-at-once [backend]
  (testing (str (:name backend) " shared: a swap! after the stored value was removed elsewhere ends at once")
    (let [loc ((:new-location backend))
          dura ((:open backend) loc {:n 1} {:shared? true})
          other ((:open backend) loc nil {:shared? true})]
      (d/destroy other)
      (let [x (deref (future (try (swap! dura update :n inc) (catch Exception x x))) 60000 ::hung)]
        (is (not= ::hung x) "the swap! returned")
        (is (true? (:duratom/vanished? (ex-data x))) (str "a clear outcome: " x))
        (is (re-find #"the stored value is gone" (str (ex-message x))))
        (is (<= (:conflicts (d/stats dura)) 1) "no compare-and-set loop")
        (is (nil? (d/backend-snapshot dura)) "nothing was written")
        (is (= {:n 1} @dura) "memory keeps the last state"))
      (testing "the next swap! stores its result as a new value"
        (is (= {:n 2} (swap! dura update :n inc)))
        (is (= {:n 2} (d/backend-snapshot dura))))
      (d/destroy dura))))

(defn run-all [backend]
  (shared-mode-commits-synchronously-over-the-default-rw backend)
  (vanished-value-ends-at-once backend)
  (refresh-and-watches backend)
  (three-processes-no-lost-update backend)
  (three-processes-keep-order backend))
