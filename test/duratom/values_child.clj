(ns duratom.values-child
  "What the child JVMs of duratom.values-test run: deep states and infinite
  lazy seqs in a JVM started with default options (no -Xss, no -Xmx), as a
  consumer runs it. Every fn prints one result line; no deftests here."
  (:require [duratom.core :as d])
  (:import (java.util.concurrent.atomic AtomicLong AtomicReference)))

(defn deep-value
  "A state nested `n` levels deep. `kind`: :vector ([[[...]]]), or :mixed,
  which cycles through vectors, maps, lists, sets, sorted maps, queues and
  vectors carrying metadata."
  [kind n]
  (reduce (fn [v i]
            (case kind
              :vector [v]
              :mixed (case (int (mod i 7))
                       0 [v]
                       1 {:k v}
                       2 (list v)
                       3 #{v}
                       4 (sorted-map i v)
                       5 (conj clojure.lang.PersistentQueue/EMPTY v)
                       6 (with-meta [v] {:level i}))))
          [] (range n)))

(defn- kind-of [x]
  (cond (instance? clojure.lang.PersistentQueue x) :queue
        (sorted? x) :sorted
        (map? x) :map
        (set? x) :set
        (vector? x) :vector
        (seq? x) :list
        :else (class x)))

(defn deep=
  "`a` and `b` are equal, collection kind for collection kind and with equal
  metadata, checked without recursion (these states are too deep for `=` on
  a default stack)."
  [a b]
  (loop [stack (list [a b])]
    (if-let [[x y] (first stack)]
      (cond
        (not (coll? x)) (and (= x y) (recur (rest stack)))
        (not (and (coll? y) (= (kind-of x) (kind-of y)) (= (meta x) (meta y)) (= (count x) (count y)))) false
        (map? x) (and (= (set (keys x)) (set (keys y)))
                      (recur (into (rest stack) (map (fn [k] [(get x k) (get y k)]) (keys x)))))
        (set? x) (recur (into (rest stack) (map vector (sort-by hash (seq x)) (sort-by hash (seq y)))))
        :else (recur (into (rest stack) (map vector x y))))
      true)))

(defn write-deep
  "Stores a state nested `n` deep in the file duratom at `path`; prints OK or
  REFUSED and the message."
  [path mode kind n]
  (let [a (d/file-atom path nil {:start 1} {:commit-mode mode})]
    (try (swap! a assoc :deep (deep-value kind n))
         (d/flush! a 120000)
         (println "OK")
         (catch Throwable e
           (println "REFUSED" (.getName (class e)) (.getMessage e))))))

(defn read-deep
  "Loads the file duratom at `path` and checks it holds the state
  `write-deep` wrote; prints EQUAL, DIFFERENT, or ERROR and the exception."
  [path kind n]
  (try (let [a (d/file-atom path)]
         (println (if (deep= (:deep @a) (deep-value kind n)) "EQUAL" "DIFFERENT")))
       (catch Throwable e
         (println "ERROR" (.getName (class e)) (.getMessage e)))))

(defn- busy-application
  "Starts a thread that keeps allocating as an application does (vectors of a
  million longs); returns [stop! report], report giving [rounds oom-or-nil]."
  []
  (let [rounds (AtomicLong.)
        failure (AtomicReference.)
        running (volatile! true)
        t (doto (Thread. ^Runnable
                 (fn []
                   (try (while @running
                          (let [v (vec (range 1000000))]
                            (when (= (count v) 1000000) (.incrementAndGet rounds))))
                        (catch Throwable e (.set failure e))))
                 "the-rest-of-the-application")
            (.setDaemon true)
            (.start))]
    [(fn [] (vreset! running false) (.join t))
     (fn [] [(.get rounds) (.get failure)])]))

(defn infinite-seqs
  "Puts each kind of infinite lazy seq into an asynchronous (and then a
  synchronous) duratom at `dir` while another thread keeps allocating;
  prints one line per seq: REFUSED or WRITTEN with the message, whether
  flush! threw, and whether the next good state landed; then APP and the
  other thread's rounds and failure."
  [dir]
  (let [[stop! report] (busy-application)]
    (doseq [[label mk] [["range" #(range)]
                        ["iterate" #(iterate inc 0)]
                        ["repeatedly" #(repeatedly (fn [] 0))]
                        ["cycle" #(cycle [1 2 3])]
                        ["repeat" #(repeat :x)]]
            mode [:duratom.core/async :sync]]
      (let [path (str dir "/" label "-" (name mode) ".edn")
            a (d/file-atom path nil {:ok 0} {:commit-mode mode})
            outcome (try (swap! a assoc :events (mk))
                         (d/flush! a 600000)
                         "WRITTEN"
                         (catch Throwable e
                           (str "REFUSED " (.getName (class e)) " " (.getMessage e))))
            _ (swap! a (fn [m] (-> m (dissoc :events) (update :ok inc))))
            ;; flush! also throws when a retry of the refused state, begun
            ;; before the good state was set, fails while it waits: the writer
            ;; then goes on to the good state, so a later flush! succeeds
            next-ok (loop [tries 5]
                      (let [r (try (d/flush! a 600000) (catch Throwable e (str "ERROR " e)))]
                        (if (and (string? r) (pos? tries)) (recur (dec tries)) r)))]
        (println label (name mode) "|" outcome "| next:" next-ok (pr-str (d/backend-snapshot a)))
        (flush)))
    (stop!)
    (let [[rounds failure] (report)]
      (println "APP" rounds (if failure (str "FAILED " failure) "ok")))))
