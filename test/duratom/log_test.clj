(ns duratom.log-test
  (:require [clojure.edn :as edn]
            [clojure.java.io :as io]
            [clojure.string :as str]
            [clojure.walk]
            [clojure.test :refer [deftest is testing]]
            [duratom.core :as d]
            [duratom.log :as dlog]
            [duratom.readers :as readers]
            [duratom.test-support :as ts])
  (:import (java.io File)
           (java.nio.file Files)))

(defn- log-atom [p init & [rw]]
  (d/file-atom p nil init (merge {:commit-mode :sync :log? true} rw)))

(defn- text [p] (slurp p))

(deftest a-commit-appends-a-record-and-compact-writes-plain-edn
  (let [p (io/file (ts/temp-dir) "log.edn")
        a (log-atom p (into {} (map (fn [i] [i {:n i}]) (range 1000))))]
    (swap! a assoc-in [7 :n] :seven)
    (swap! a dissoc 8)
    (swap! a assoc :new #{1 2})
    (let [s (d/stats a)]
      (is (= 3 (:log-records s)) "three records since the base")
      (is (pos? (:log-bytes s))))
    (is (= 3 (count (re-seq #";duratom/r " (text p)))) "the records are in the file")
    (is (= @a @(log-atom p nil)) "a reopened duratom replays them")
    (d/compact! a)
    (is (zero? (:log-records (d/stats a))))
    (is (not (str/includes? (text p) ";duratom/r ")) "compacted: no records")
    (is (= @a (edn/read-string readers/default (text p))) "plain EDN with the header")
    (is (= @a @(d/file-atom p)) "a duratom not in log mode reads the compacted file")
    (swap! a assoc :after 1)
    (let [e (try (d/file-atom p) nil (catch Exception e e))]
      (is (and e (str/includes? (ex-message e) "log mode")) "a file with records refuses non-log mode, saying why"))))

(deftest log-mode-is-a-constructor-keyword-too
  (let [p (io/file (ts/temp-dir) "log.edn")
        init (into {:n 0} (map (fn [i] [i {:n i}]) (range 100))) ; a record is small beside it
        a (d/duratom :local-file :file-path p :init init :log? true :rw {:commit-mode :sync})]
    (swap! a update :n inc)
    (swap! a update :n inc)
    (is (pos? (:log-records (d/stats a))) "commits appended records")
    (is (str/includes? (text p) ";duratom/r ") "the record is in the file")
    (is (= (assoc init :n 2) @(log-atom p nil)))))

;; ------------------------------------------------------------ generative

(def ^:private leaves [0 1 -7 "s" :k 'sym 1.5 nil true \c 3/4 #inst "2024-01-01T00:00:00.000-00:00"
                       (java.time.LocalDate/of 2024 2 29)])

(defn- rand-path
  "A path to an existing collection in `v` (maps and vectors only), at most
  4 deep."
  [^java.util.Random r v]
  (loop [path [] x v depth 0]
    (let [kids (cond (map? x) (vec (filter (fn [[_ c]] (coll? c)) x))
                     (vector? x) (vec (keep-indexed (fn [i c] (when (coll? c) [i c])) x))
                     :else [])]
      (if (or (empty? kids) (> depth 3) (zero? (.nextInt r 3)))
        path
        (let [[k c] (nth kids (.nextInt r (count kids)))]
          (recur (conj path k) c (inc depth)))))))

(defn- rand-leaf [^java.util.Random r] (nth leaves (.nextInt r (count leaves))))

(defn- rand-coll [^java.util.Random r]
  (case (.nextInt r 7)
    0 {:a (rand-leaf r)}
    1 [(rand-leaf r) (rand-leaf r)]
    2 #{(rand-leaf r)}
    3 (sorted-map 1 (rand-leaf r) 2 2)
    4 (into {} (map (fn [i] [i i]) (range (.nextInt r 40))))
    5 (vec (range (.nextInt r 70)))
    6 (conj clojure.lang.PersistentQueue/EMPTY 1 2)))

(defn- rand-op
  "One random operation on `v`: assoc, dissoc, update-in, conj, disj, pop,
  with-meta, or a change of type at a random place."
  [^java.util.Random r v]
  (let [path (rand-path r v)
        x (get-in v path)
        f (case (.nextInt r 8)
            0 (fn [c] (cond (map? c) (assoc c (.nextInt r 60) (if (zero? (.nextInt r 3)) (rand-coll r) (rand-leaf r)))
                            (vector? c) (if (seq c) (assoc c (.nextInt r (count c)) (rand-leaf r)) (conj c 1))
                            :else c))
            1 (fn [c] (if (and (map? c) (seq c)) (dissoc c (key (first (shuffle (seq c))))) c))
            2 (fn [c] (if (vector? c) (conj c (rand-leaf r)) (if (set? c) (conj c (rand-leaf r)) c)))
            3 (fn [c] (cond (set? c) (if (seq c) (disj c (first c)) c)
                            (and (vector? c) (seq c)) (pop c)
                            :else c))
            4 (fn [c] (with-meta c {:m (.nextInt r 5)}))
            5 (fn [c] (if (map? c) (into (sorted-map) (filter (comp number? key) c)) (if (vector? c) (apply list c) c)))
            6 (fn [c] (if (and (map? c) (not (sorted? c))) (assoc c :kid (rand-coll r)) c))
            7 (fn [c] (if (and (map? c) (not (sorted? c))) (update c :count (fnil inc 0)) c)))]
    (if (empty? path) (f v) (update-in v path f))))

(defn- shape
  "`ts/types-of`, except that hash and array maps are one kind: which of the
  two a map is depends on how it was built, and EDN reading does not keep it."
  [x]
  (clojure.walk/postwalk #(if (contains? #{clojure.lang.PersistentArrayMap clojure.lang.PersistentHashMap} %) :map %)
                         (ts/types-of x)))

(deftest replay-gives-exactly-the-committed-state
  (let [seed (System/nanoTime)
        r (java.util.Random. seed)
        p (io/file (ts/temp-dir) "gen.edn")
        init {:users (into {} (map (fn [i] [i {:id i :tags #{i}}]) (range 300)))
              :v (vec (range 100)) :s (sorted-map 1 1) :top 0}
        a (log-atom p init)
        ops (volatile! 0)]
    (dotimes [_ 100]
      (dotimes [_ 25]
        (swap! a #(rand-op r %))
        (vswap! ops inc))
      (let [again @(log-atom p nil)]
        (is (= (shape @a) (shape again))
            (str "seed " seed ": the replayed state differs after " @ops " operations"))))
    (println "log replay:" @ops "operations, seed" seed)
    (is (>= @ops 2000))))

(deftest diff-finds-only-the-change-in-a-large-map
  (let [m (into {} (map (fn [i] [i {:n i}]) (range 200000)))
        m2 (assoc-in m [12345 :n] :x)]
    (is (= [[:put [12345 :n] :x]] (dlog/diff m m2)) "a number replaced by a keyword: put whole")
    (is (= [[:assoc [12345] :m 1]] (dlog/diff m (assoc-in m [12345 :m] 1))))
    (is (= [[:dissoc [] 5]] (dlog/diff m (dissoc m 5))))
    (is (= [[:put [7 :n 1] 2]] (dlog/diff (assoc-in m [7 :n] [1000 1]) (assoc-in m [7 :n] [(Long/valueOf 1000) 2])))
        "an equal number in another box is no change")
    (is (= [[:put [7 :n] -0.0]] (dlog/diff (assoc-in m [7 :n] 0.0) (assoc-in m [7 :n] -0.0)))
        "-0.0 is not 0.0")
    (is (= [[:put [7 :n] 7N]] (dlog/diff m (assoc-in m [7 :n] (bigint 7)))) "nor 7N 7")
    (is (= [] (dlog/diff m m)))))

;; A key that counts the hashes asked of it: a comparison that copies a
;; sorted map into a hash map hashes every key.
(def ^:private hashes (java.util.concurrent.atomic.AtomicLong.))
(deftype CountedKey [^long n]
  Comparable
  (compareTo [_ o] (Long/compare n (.-n ^CountedKey o)))
  Object
  (equals [_ o] (and (instance? CountedKey o) (= n (.-n ^CountedKey o))))
  (hashCode [_] (.incrementAndGet hashes) (Long/hashCode n))
  clojure.lang.IHashEq
  (hasheq [_] (.incrementAndGet hashes) (Long/hashCode n)))

(deftest diff-finds-only-the-change-in-a-large-sorted-map-or-set
  (let [ks (mapv #(CountedKey. (* 2 %)) (range 200000))
        m (into (sorted-map) (map (fn [k] [k 0]) ks))
        s (into (sorted-set) ks)
        k (ks 12345)
        new-key (CountedKey. 1001)
        hashed (fn [f] (.set hashes 0) (let [ops (f)] [ops (.get hashes)]))]
    (let [[ops n] (hashed #(dlog/diff m (assoc m k 1)))]
      (is (= [[:put [k] 1]] ops))
      (is (< n 100) (str "the unchanged entries are not visited (" n " keys hashed)")))
    (is (= [[:dissoc [] k]] (first (hashed #(dlog/diff m (dissoc m k))))))
    (is (= [[:assoc [] new-key 5]] (first (hashed #(dlog/diff m (assoc m new-key 5))))))
    (let [[ops n] (hashed #(dlog/diff s (conj (disj s k) new-key)))]
      (is (= #{[:disj [] k] [:conj [] new-key]} (set ops)))
      (is (< n 100) (str "the unchanged elements are not visited (" n " keys hashed)"))))
  (testing "a key replaced by an equal one of another class is recorded as such"
    (let [a (sorted-map 1 :a 2 :b)
          b (-> a (dissoc 1) (assoc 1N :a))]
      (is (= [clojure.lang.BigInt Long] (map class (keys (reduce dlog/apply-op a (dlog/diff a b))))))))
  (testing "random changes replay exactly, both ways"
    (let [seed (System/nanoTime)
          r (java.util.Random. seed)]
      (doseq [n [0 1 2 5 40 1000]
              _ (range 60)]
        (let [pick #(.nextInt r (+ 4 (* 2 n)))
              a (into (sorted-map) (map (fn [i] [(* 2 i) i]) (range n)))
              sa (into (sorted-set) (map #(* 2 %) (range n)))
              b (reduce (fn [m _] (case (.nextInt r 3) 0 (assoc m (pick) (pick)) 1 (dissoc m (pick)) 2 (assoc m (pick) {:x (pick)})))
                        a (range (.nextInt r 30)))
              sb (reduce (fn [x _] (if (zero? (.nextInt r 2)) (conj x (pick)) (disj x (pick)))) sa (range (.nextInt r 30)))]
          (doseq [[x y] [[a b] [b a] [sa sb] [sb sa]]]
            (is (= y (reduce dlog/apply-op x (dlog/diff x y 1000000)))
                (str "seed " seed ": a change of a sorted collection of " n " replays differently"))))))))

;; ---------------------------------------------------------------- crashes

(deftest acknowledged-records-survive-sigkill
  (let [dir (ts/temp-dir)
        p (io/file dir "crash.edn")
        rnd (java.util.Random. 7)
        code (str "(require 'duratom.core)"
                  "(let [a (duratom.core/file-atom \"" p "\" nil {:n 0 :pad (vec (range 2000))}"
                  "          {:commit-mode :sync :log? true})]"
                  "  (loop [i 0] (let [v (:n (swap! a update :n inc))]"
                  "    (when (zero? (mod i 97)) (duratom.core/compact! a))"
                  "    (println v) (flush)) (recur (inc i))))")]
    (dotimes [i 50]
      (let [acked (ts/sigkill-after-acks code (inc (.nextInt rnd 300)))]
        (is (some? acked))
        (let [stored (:n @(log-atom p nil))]
          (is (and (some? stored) (>= stored acked))
              (str "kill " i ": stored " stored ", last acknowledged " acked)))))))

(deftest shared-mode-in-log-mode-loses-no-update
  (let [p (io/file (ts/temp-dir) "shared.edn")
        a (log-atom p {:n 0 :pad (vec (range 500))} {:shared? true})
        code (str "(require 'duratom.core)"
                  "(let [a (duratom.core/file-atom \"" p "\" nil nil {:shared? true :log? true})]"
                  "  (dotimes [_ 200] (swap! a update :n inc)) (println :done))")
        kids (doall (repeatedly 2 #(future (ts/child-output code))))]
    (dotimes [_ 200] (swap! a update :n inc))
    (doseq [k kids] (is (str/includes? @k ":done")))
    (is (= 600 (:n (d/refresh! a))))
    (is (= 600 (:n @(log-atom p nil))))))

;; ----------------------------------------------------------- torn tails

(defn- file-bytes ^bytes [p] (Files/readAllBytes (.toPath (io/file p))))

(defn- data-size
  "The length of the file `p` without the zeros after its data: the space
  reserved for appends."
  [p]
  (let [b (file-bytes p)]
    (loop [n (alength b)]
      (if (and (pos? n) (zero? (aget b (dec n)))) (recur (dec n)) n))))

(defn- record-starts
  "Byte offsets of the change record lines in the file `p`."
  [p]
  (let [s (String. (file-bytes p) "ISO-8859-1")] ; one char per byte: offsets are byte offsets
    (loop [from 0 acc []]
      (let [i (.indexOf s ";duratom/r " (int from))]
        (if (neg? i) acc (recur (inc i) (conj acc i)))))))

(defn- cut-to!
  "Cuts the file `p` to its first `n` bytes, as a crash in the middle of an
  append leaves it."
  [p n]
  (with-open [ch (java.nio.channels.FileChannel/open (.toPath (io/file p))
                                                     (into-array java.nio.file.OpenOption
                                                                 [java.nio.file.StandardOpenOption/WRITE]))]
    (.truncate ch (long n))))

(defn- copy! [from to]
  (Files/copy (.toPath (io/file from)) (.toPath (io/file to))
              ^"[Ljava.nio.file.CopyOption;"
              (into-array java.nio.file.CopyOption [java.nio.file.StandardCopyOption/REPLACE_EXISTING])))

(deftest a-record-cut-short-loads-as-the-state-before-it
  (let [dir (ts/temp-dir)
        p (io/file dir "whole.edn")
        a (log-atom p {:n 0 :tags #{} :v []})
        states (vec (for [i (range 1 6)] (swap! a #(-> % (assoc :n i) (update :tags conj i) (update :v conj (str "s" i))))))
        starts (record-starts p)
        size (data-size p)
        last-start (peek starts)
        cut (io/file dir "cut.edn")]
    (is (= 5 (count starts)) "one record per swap")
    ;; every length that leaves the last record short, down to its first byte
    (doseq [n (range last-start size)]
      (copy! p cut)
      (cut-to! cut n)
      (is (= (states 3) @(log-atom cut nil)) (str "cut to " n " of " size " bytes")))
    (testing "zeros where the end of the last record should be (power lost before its fdatasync)"
      (copy! p cut)
      (with-open [ch (java.nio.channels.FileChannel/open (.toPath cut)
                                                         (into-array java.nio.file.OpenOption
                                                                     [java.nio.file.StandardOpenOption/WRITE]))]
        (.write ch (java.nio.ByteBuffer/wrap (byte-array (- size last-start 20))) (long (+ last-start 20))))
      (is (= (states 3) @(log-atom cut nil))))
    (testing "the next commit replaces the torn record and is read back"
      (copy! p cut)
      (cut-to! cut (- size 3))
      (let [b (log-atom cut nil)]
        (swap! b assoc :after :torn)
        (is (= 5 (count (record-starts cut))) "appended where the torn record began")
        (is (= (assoc (states 3) :after :torn) @(log-atom cut nil)))))))

(deftest a-record-cut-short-after-sigkill-loads-as-the-state-before-it
  (let [dir (ts/temp-dir)
        rnd (java.util.Random. 11)]
    (dotimes [i 5]
      (let [p (io/file dir (str "kill-" i ".edn"))
            code (str "(require 'duratom.core)"
                      "(let [a (duratom.core/file-atom \"" p "\" nil {:n 0} {:commit-mode :sync :log? true})]"
                      "  (loop [] (println (:n (swap! a update :n inc))) (flush) (recur)))")
            acked (ts/sigkill-after-acks code (+ 2 (.nextInt rnd 100)))
            stored (:n @(log-atom p nil))
            starts (record-starts p)
            whole (count starts)]
        (is (>= stored acked) (str "kill " i ": stored " stored ", last acknowledged " acked))
        ;; the file may end in a record the kill cut short: cut inside the
        ;; last whole one (record k holds :n k)
        (let [last-whole (nth starts (dec stored))
              end (if (> whole stored) (nth starts stored) (data-size p))]
          (cut-to! p (+ last-whole (.nextInt rnd (- end last-whole))))
          (is (= {:n (dec stored)} @(log-atom p nil)) (str "kill " i ": cut inside record " stored)))))))

(deftest damage-before-the-last-record-is-an-error-naming-file-and-offset
  (let [dir (ts/temp-dir)
        p (io/file dir "damaged.edn")
        a (log-atom p {:n 0 :s "text"})]
    (dotimes [i 4] (swap! a assoc :n (+ 100 i)))
    (let [starts (record-starts p)
          bytes (file-bytes p)
          at (+ (nth starts 1) (- (nth starts 2) (nth starts 1) 3)) ; inside record 2's payload
          damaged (doto (aclone bytes) (aset at (byte (if (= (aget bytes at) (int \7)) \8 \7))))]
      (Files/write (.toPath p) damaged ^"[Ljava.nio.file.OpenOption;" (make-array java.nio.file.OpenOption 0))
      (let [e (try (log-atom p nil) nil (catch Exception e e))
            msg (str (some-> e ex-message) " " (some-> e ex-cause ex-message))]
        (is (some? e) "construction fails")
        (is (str/includes? msg (str p)) msg)
        (is (str/includes? msg (str "byte offset " (nth starts 1))) msg))
      (is (java.util.Arrays/equals damaged (file-bytes p)) "the file is left untouched"))))

;; ------------------------------------------------------------------ depth

(defn- nested [n leaf] (reduce (fn [x _] [x]) leaf (range n)))

(defn- bottom
  "The depth of a value `nested` built, and its leaf (a loop: `=` would
  recurse as deep as the value)."
  [x]
  (loop [x x d 0] (if (vector? x) (recur (first x) (inc d)) [d x])))

(deftest a-state-nested-deeper-than-the-stack-commits-and-replays
  (let [p (io/file (ts/temp-dir) "deep.edn")
        a (log-atom p {:n 0 :d [0]})]
    (swap! a assoc :d (nested 50000 :a))
    (is (= [50000 :a] (bottom (:d @(log-atom p nil)))) "read back on a stack sized for it")
    (swap! a assoc :d (nested 50000 :b)) ; comparing this change overflows a stack: written whole
    (swap! a update :n inc)
    (let [b @(log-atom p nil)]
      (is (= [50000 :b] (bottom (:d b))))
      (is (= 1 (:n b))))
    (let [records (:log-records (d/stats a))]
      (swap! a update-in (into [:d] (repeat 500 0)) (constantly [:c]))
      (is (= (inc records) (:log-records (d/stats a))) "a record whose path is 501 keys long")
      (is (= [501 :c] (bottom (:d @(log-atom p nil))))))))
