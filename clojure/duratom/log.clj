(ns duratom.log
  "Log mode: a commit stores what changed since the last stored state, as one
  change record, instead of the whole state.

  The change is found by node identity: Clojure's persistent collections copy
  only the path to a change and share every other node, so comparing the
  last stored state with the new one with `identical?`, and descending only
  where they differ, costs about the size of the change, not of the state.
  Hash maps are compared through their trie nodes, vectors through their
  32-element arrays, sorted maps and sets through their red-black trees,
  array maps entry by entry. A change of type or of metadata, and
  any other collection, is recorded whole at that point.

  A change record is backend-independent EDN: a vector of operations, each
  `[op path & args]` where `path` is the keys (and vector indices) from the
  root to the collection changed:
  `[:assoc path k v]`, `[:dissoc path k]`, `[:conj path x]` and
  `[:disj path x]` (sets), `[:pop path n]` (a vector cut to n elements),
  `[:put path v]` (the value at path replaced whole).

  Stored, a log is the base state followed by its records, as EDN forms;
  `replay` rebuilds the state from them exactly."
  (:require [clojure.edn :as edn]
            [duratom.edn :as dedn]
            [duratom.readers :as readers])
  (:import (clojure.lang PersistentHashMap PersistentHashSet PersistentVector PersistentArrayMap
                         PersistentTreeMap PersistentTreeSet APersistentSet IRecord IObj)
           (java.io PushbackReader StringReader)
           (java.lang.reflect Field)
           (java.nio.charset StandardCharsets)))

(set! *warn-on-reflection* true)

(defn- field ^Field [^Class c ^String name]
  (doto (.getDeclaredField c name) (.setAccessible true)))

(def ^:private ^Field phm-root (field PersistentHashMap "root"))
(def ^:private ^Field set-impl (field APersistentSet "impl"))
(def ^:private bitmap-node (Class/forName "clojure.lang.PersistentHashMap$BitmapIndexedNode"))
(def ^:private array-node (Class/forName "clojure.lang.PersistentHashMap$ArrayNode"))
(def ^:private ^Field bin-bitmap (field bitmap-node "bitmap"))
(def ^:private ^Field bin-array (field bitmap-node "array"))
(def ^:private ^Field an-array (field array-node "array"))
(def ^:private ^Field hcn-array (field (Class/forName "clojure.lang.PersistentHashMap$HashCollisionNode") "array"))

(def ^:private min-max-ops
  "The fewest operations `diff` gives up at (see `diff`)."
  4096)

(defn- too-many! []
  (throw (ex-info "change too large" {::too-large true})))

;; ------------------------------------------------------------------ diff

(defn- add-entries!
  "Every [k v] under the trie node `node` into the java.util.HashMap `m`."
  [^java.util.HashMap m node]
  (when node
    (condp identical? (class node)
      bitmap-node (let [^objects a (.get bin-array node)]
                    (loop [i 0]
                      (when (< i (alength a))
                        (let [k (aget a i) v (aget a (inc i))]
                          (if (nil? k)
                            (add-entries! m v) ; nil key slot: a subnode (or empty)
                            (.put m k v)))
                        (recur (+ i 2)))))
      array-node (doseq [n ^objects (.get an-array node)] (add-entries! m n))
      (let [^objects a (.get hcn-array node)]
        (loop [i 0]
          (when (< i (alength a))
            (when-let [k (aget a i)] (.put m k (aget a (inc i))))
            (recur (+ i 2))))))))

(declare diff!)

(defn- entries-diff!
  "Compares two java.util.Maps of entries of the map at `path`."
  [out path ^java.util.Map a ^java.util.Map b]
  (doseq [^java.util.Map$Entry e (.entrySet a)]
    (let [k (.getKey e)]
      (if (.containsKey b k)
        (diff! out (conj path k) (.getValue e) (.get b k))
        (out [:dissoc path k]))))
  (doseq [^java.util.Map$Entry e (.entrySet b)]
    (when-not (.containsKey a (.getKey e))
      (out [:assoc path (.getKey e) (.getValue e)]))))

(defn- subtree-diff! [out path na nb]
  (let [a (java.util.HashMap.) b (java.util.HashMap.)]
    (add-entries! a na)
    (add-entries! b nb)
    (entries-diff! out path a b)))

(defn- node-diff!
  "Reports the changed entries between trie nodes `na` and `nb`, skipping
  every pair of identical subtrees."
  [out path na nb]
  (cond
    (identical? na nb) nil
    (and (identical? (class na) bitmap-node) (identical? (class nb) bitmap-node))
    (let [ba (bit-and 0xffffffff (long (.get bin-bitmap na))) bb (bit-and 0xffffffff (long (.get bin-bitmap nb)))
          ^objects aa (.get bin-array na) ^objects ab (.get bin-array nb)]
      (loop [bits (bit-or ba bb)]
        (when-not (zero? bits)
          (let [bit (Long/lowestOneBit bits)
                ia (when-not (zero? (bit-and ba bit)) (* 2 (Long/bitCount (bit-and ba (dec bit)))))
                ib (when-not (zero? (bit-and bb bit)) (* 2 (Long/bitCount (bit-and bb (dec bit)))))
                ka (when ia (aget aa ia)) va (when ia (aget aa (inc ia)))
                kb (when ib (aget ab ib)) vb (when ib (aget ab (inc ib)))]
            (cond
              (and ia ib (identical? ka kb) (identical? va vb)) nil
              (and ia ib (nil? ka) (nil? kb)) (node-diff! out path va vb)
              ;; the same key, its value changed: assoc keeps the key object
              (and ia ib (some? ka) (identical? ka kb)) (diff! out (conj path ka) va vb)
              :else
              (let [a (java.util.HashMap.) b (java.util.HashMap.)]
                (when ia (if (nil? ka) (add-entries! a va) (.put a ka va)))
                (when ib (if (nil? kb) (add-entries! b vb) (.put b kb vb)))
                (entries-diff! out path a b)))
            (recur (bit-xor bits bit))))))
    (and (identical? (class na) array-node) (identical? (class nb) array-node))
    (let [^objects aa (.get an-array na) ^objects ab (.get an-array nb)]
      (dotimes [i (alength aa)]
        (node-diff! out path (aget aa i) (aget ab i))))
    :else (subtree-diff! out path na nb)))

(defn- plain-map? [x]
  (or (instance? PersistentHashMap x) (instance? PersistentArrayMap x)))

(def ^:private small-array-map
  "Array maps of at most this many entries are compared by lookups in
  place (linear in an array map): no copy."
  16)

(defn- array-map-diff! [out path ^PersistentArrayMap a ^PersistentArrayMap b]
  (let [absent (Object.)]
    (reduce-kv (fn [_ k va]
                 (let [vb (.valAt b k absent)]
                   (if (identical? vb absent)
                     (out [:dissoc path k])
                     (diff! out (conj path k) va vb))))
               nil a)
    (reduce-kv (fn [_ k vb] (when-not (.containsKey a k) (out [:assoc path k vb]))) nil b)))

(defn- map-diff! [out path a b]
  (cond
    (and (instance? PersistentHashMap a) (instance? PersistentHashMap b))
    (do (when (or (contains? a nil) (contains? b nil))
          (let [a1 (if (contains? a nil) (doto (java.util.HashMap.) (.put nil (get a nil))) {})
                b1 (if (contains? b nil) (doto (java.util.HashMap.) (.put nil (get b nil))) {})]
            (entries-diff! out path a1 b1)))
        (node-diff! out path (.get phm-root a) (.get phm-root b)))

    (and (instance? PersistentArrayMap a) (instance? PersistentArrayMap b)
         (<= (count a) (long small-array-map)) (<= (count b) (long small-array-map)))
    (array-map-diff! out path a b)

    :else
    (entries-diff! out path (java.util.HashMap. ^java.util.Map a) (java.util.HashMap. ^java.util.Map b))))

(defn- set-diff! [out path a b]
  (let [ops (java.util.ArrayList.)
        collect (fn [op] (.add ops op))]
    (map-diff! collect [] (.get set-impl a) (.get set-impl b))
    (doseq [[op _ k] ops]
      (out (if (= op :dissoc) [:disj path k] [:conj path k])))))

(defn- vector-diff! [out path ^PersistentVector a ^PersistentVector b]
  (let [na (.count a) nb (.count b) n (min na nb)]
    (loop [i 0]
      (when (< i n)
        (let [^objects ca (.arrayFor a i) ^objects cb (.arrayFor b i)]
          (when-not (identical? ca cb)
            (dotimes [j (min 32 (- n i))]
              (diff! out (conj path (+ i j)) (aget ca j) (aget cb j)))))
        (recur (+ i 32))))
    (when (< nb na) (out [:pop path nb]))
    (loop [i na]
      (when (< i nb)
        (out [:assoc path i (.nth b i)])
        (recur (inc i))))))

;; Sorted maps and sets: both red-black trees are walked in key order at
;; once, as two stacks of pending items (a subtree still to open, or one
;; node's own entry), and a subtree found on top of both stacks at the same
;; moment is skipped whole: it holds the same entries in both. Opening the
;; item whose entries come first (by its smallest key, then the one reaching
;; further) keeps the two walks in step, so the subtrees an assoc or dissoc
;; did not copy meet and are skipped, and the walk costs about the change
;; times the tree's height squared, not the size of the collection.

(def ^:private tree-node (Class/forName "clojure.lang.PersistentTreeMap$Node"))
(def ^:private no-args (object-array 0))
(defn- tree-method ^java.lang.reflect.Method [^String name]
  (doto (.getDeclaredMethod ^Class tree-node name (make-array Class 0)) (.setAccessible true)))
(def ^:private ^java.lang.reflect.Method node-left (tree-method "left"))
(def ^:private ^java.lang.reflect.Method node-right (tree-method "right"))
(defn- left [n] (.invoke node-left n no-args))
(defn- right [n] (.invoke node-right n no-args))

;; A tree node's own entry (its key and value), as opposed to the node
;; standing for its whole subtree.
(deftype OwnEntry [node])

(defn- subtree? [x] (instance? tree-node x))

(defn- end-key
  "The key at the end of subtree `n` that `side` (left or right) leads to,
  remembered in `seen` (an IdentityHashMap) for every node on the way, so
  that a walk asks each node once."
  [side ^java.util.IdentityHashMap seen n]
  (or (.get seen n)
      (let [k (if-let [c (side n)]
                (end-key side seen c)
                (.key ^clojure.lang.PersistentTreeMap$Node n))]
        (.put seen n k)
        k)))

(defn- open-top!
  "Replaces the subtree on top of `stack` with its left subtree, its own
  entry and its right subtree (the left on top)."
  [^java.util.ArrayDeque stack]
  (let [n (.pop stack)]
    (when-let [r (right n)] (.push stack r))
    (.push stack (OwnEntry. n))
    (when-let [l (left n)] (.push stack l))))

(defn- same-key?
  "Whether keys `ka` and `kb`, equal by the comparator, are the same key as
  stored: the same object, or equal values of one class with equal metadata."
  [ka kb]
  (or (identical? ka kb)
      (and (identical? (class ka) (class kb)) (= ka kb) (= (meta ka) (meta kb)))))

(defn- tree-diff!
  "Reports the changed entries between the trees `ta` and `tb` (roots, or
  nil when empty) ordered by `cmp`: through `gone` (a key of `ta` only),
  `added` (key and value of `tb` only) and `both` (a key in both, its two
  values)."
  [^java.util.Comparator cmp ta tb gone added both]
  (let [sa (java.util.ArrayDeque.) sb (java.util.ArrayDeque.)
        entry-of (fn [x] (.node ^OwnEntry x))
        firsts (java.util.IdentityHashMap.)
        lasts (java.util.IdentityHashMap.)
        first-key (fn [x] (if (subtree? x)
                            (end-key left firsts x)
                            (.key ^clojure.lang.PersistentTreeMap$Node (entry-of x))))
        last-key (fn [n] (end-key right lasts n))]
    (when ta (.push sa ta))
    (when tb (.push sb tb))
    (loop []
      (let [x (.peek sa) y (.peek sb)]
        (cond
          (and (nil? x) (nil? y)) nil
          (identical? x y) (do (.pop sa) (.pop sb))
          (nil? y) (if (subtree? x) (open-top! sa) (gone (.key ^clojure.lang.PersistentTreeMap$Node (entry-of (.pop sa)))))
          (nil? x) (if (subtree? y) (open-top! sb)
                       (let [^clojure.lang.PersistentTreeMap$Node n (entry-of (.pop sb))] (added (.key n) (.val n))))
          :else
          (let [c (.compare cmp (first-key x) (first-key y))]
            (cond
              (neg? c) (if (subtree? x) (open-top! sa) (gone (.key ^clojure.lang.PersistentTreeMap$Node (entry-of (.pop sa)))))
              (pos? c) (if (subtree? y) (open-top! sb)
                           (let [^clojure.lang.PersistentTreeMap$Node n (entry-of (.pop sb))] (added (.key n) (.val n))))
              (and (subtree? x) (subtree? y))
              (let [c (.compare cmp (last-key x) (last-key y))]
                (when-not (neg? c) (open-top! sa))
                (when-not (pos? c) (open-top! sb)))
              (subtree? x) (open-top! sa)
              (subtree? y) (open-top! sb)
              :else
              (let [^clojure.lang.PersistentTreeMap$Node na (entry-of (.pop sa))
                    ^clojure.lang.PersistentTreeMap$Node nb (entry-of (.pop sb))]
                (if (same-key? (.key na) (.key nb))
                  (both (.key nb) (.val na) (.val nb))
                  (do (gone (.key na)) (added (.key nb) (.val nb)))))))))
        (when (or (.peek sa) (.peek sb)) (recur)))))

(defn- tree-of
  "The root node of sorted map or set `sorted` (nil when empty)."
  [sorted]
  (let [^PersistentTreeMap m (if (instance? PersistentTreeSet sorted) (.get set-impl sorted) sorted)]
    (.-tree m)))

(defn- sorted-diff! [out path a b]
  (let [cmp (.comparator ^clojure.lang.Sorted a)]
    (if (map? a)
      (tree-diff! cmp (tree-of a) (tree-of b)
                  (fn [k] (out [:dissoc path k]))
                  (fn [k v] (out [:assoc path k v]))
                  (fn [k va vb] (diff! out (conj path k) va vb)))
      (tree-diff! cmp (tree-of a) (tree-of b)
                  (fn [k] (out [:disj path k]))
                  (fn [k _] (out [:conj path k]))
                  (fn [_ _ _] nil)))))

(defn- same-kind?
  "Whether `b` can be reached from `a` by the operations (same type,
  comparator and metadata)."
  [a b]
  (and (= (meta a) (meta b))
       (not (instance? IRecord a)) (not (instance? IRecord b))
       (or (and (plain-map? a) (plain-map? b))
           (and (instance? PersistentHashSet a) (instance? PersistentHashSet b))
           (and (instance? PersistentVector a) (instance? PersistentVector b))
           (and (or (instance? PersistentTreeMap a) (instance? PersistentTreeSet a))
                (identical? (class a) (class b))
                (identical? (.comparator ^clojure.lang.Sorted a) (.comparator ^clojure.lang.Sorted b))))))

(defn- same-scalar?
  "Whether `a` and `b` are equal plain values (no collection, no metadata)
  of one class, so that either stands for the other exactly: `.equals`, not
  `=`, which takes 0.0 for -0.0."
  [a b]
  (and (some? a)
       (not (instance? clojure.lang.IMeta a))
       (identical? (class a) (class b))
       (.equals ^Object a b)))

(defn- diff!
  "Reports, through `out`, the operations that turn `a` into `b` at `path`."
  [out path a b]
  (cond
    (identical? a b) nil
    (same-scalar? a b) nil
    (not (same-kind? a b)) (out [:put path b])
    (plain-map? a) (map-diff! out path a b)
    (instance? PersistentHashSet a) (set-diff! out path a b)
    (instance? PersistentVector a) (vector-diff! out path a b)
    :else (sorted-diff! out path a b)))

(defn diff
  "The operations that turn `a` into `b` (a vector), or nil when `b` cannot
  be reached from `a` by operations (another type or metadata at the root),
  or when the change takes more than `max-ops` operations (default 4,096):
  past that, the caller writes the state whole."
  ([a b] (diff a b min-max-ops))
  ([a b max-ops]
   (when (and (some? a) (some? b) (same-kind? a b))
    (let [limit (long max-ops)
          ops (java.util.ArrayList.)
          out (fn [op]
                (when (>= (.size ops) limit) (too-many!))
                (.add ops op))]
      (try (diff! out [] a b)
           (vec ops)
           (catch clojure.lang.ExceptionInfo x
             (if (::too-large (ex-data x)) nil (throw x)))
           ;; nested past this thread's stack: the full state is written,
           ;; which the encoder does on a stack sized for it
           (catch StackOverflowError _ nil))))))

;; ---------------------------------------------------------------- replay

(defn- at-path
  "(f (get-in state path)) put back at path, every collection keeping its
  type and metadata. A loop, not recursion: a path may be as long as the
  state is deep."
  [state path f]
  (let [path (vec path)
        n (count path)
        ;; the collections along the path, the state first
        colls (loop [i 0 x state acc (transient [])]
                (if (< i n) (recur (inc i) (get x (nth path i)) (conj! acc x)) (persistent! acc)))]
    (loop [i (dec n) v (f (if (zero? n) state (get (peek colls) (peek path))))]
      (if (neg? i) v (recur (dec i) (assoc (nth colls i) (nth path i) v))))))

(defn- pop-to [v ^long n]
  (loop [v v] (if (> (count v) n) (recur (pop v)) v)))

(defn apply-op
  "`state` with one operation of a change record applied."
  [state [op path a b]]
  (at-path state path
           (case op
             :assoc #(assoc % a b)
             :dissoc #(dissoc % a)
             :conj #(conj % a)
             :disj #(disj % a)
             :pop #(pop-to % (long a))
             :put (constantly a))))

(def ^:private record-tag ";duratom/r ")

(defn- replay-text [^bytes bytes]
  (let [text (String. bytes StandardCharsets/UTF_8)
        r (PushbackReader. (StringReader. text))
        opts {:eof ::eof :readers (:readers readers/default) :default (:default readers/default)}
        base (edn/read opts r)]
    (loop [state (if (identical? base ::eof) nil base) n 0]
      (let [ops (edn/read opts r)]
        (if (identical? ops ::eof)
          (let [base-chars (if (zero? n) (.length text) (max 0 (.indexOf text ^String record-tag)))]
            [state n base-chars (- (.length text) base-chars)])
          (recur (reduce apply-op state ops) (inc n)))))))

(defn replay
  "The state the stored log text `bytes` (UTF-8: the base, then change
  records, as EDN forms) holds, and the figures of the log:
  `[state records base-chars log-chars]` (the sizes in characters; the base
  is taken to end where the first record line starts). Read with a stack
  sized for the text's nesting (see duratom.edn/read-guarded)."
  [^bytes bytes]
  (dedn/read-guarded bytes #(replay-text bytes)))

;; ----------------------------------------------------------------- codec

(def ^:private record-overhead
  "Bytes a record's line and final newline add to its payload (about)."
  48)

(def ^:private min-base-bytes
  "The base size below which the compaction rules count as if the base were
  this large: a small state would otherwise be rewritten whole every few
  commits, and a durable replace costs several appends."
  65536)

(defn codec
  "Log mode over the EDN codec `edn-codec` ({:encode :decode}): `:encode`
  gives a change record from the last stored state when one is known and
  the change is small (a full state otherwise: until a state of this codec
  is known to be stored, when the commit is made after another version than
  that one (see duratom.storage/commit!), when the records have outgrown the
  base, when the record would pass half the base (a base under 64 KiB counts
  as 64 KiB for both), or after `:compact!`); `:decode` replays base and
  records. `record-encode` encodes records; a record's encoded also carries
  `:log/stored?`, a fn of stored bytes telling whether they hold the state
  it records (replayed and compared with `=`). Also gives `:loaded` (a fn of
  value and version: the state just decoded is stored as that version, so
  that the next commit appends to it), `:stats` (a fn: `{:log-records n
  :log-bytes n}` since the last full state) and `:compact!` (a fn: commits
  write the full state until one has landed)."
  [edn-codec record-encode]
  (let [last (atom nil) ; {:value :version :base-bytes :log-bytes :records} of the last state known stored
        decoded (atom nil) ; {:value :base-bytes :log-bytes :records} of the last decode
        compact? (atom false)
        encode (:encode edn-codec)]
    {:encode (fn [value]
               (let [{:keys [version base-bytes log-bytes] :as l} @last
                     room (max (long min-base-bytes) (long (or base-bytes 0)))
                     full (delay (let [enc (encode value)
                                       size (:size enc)]
                                   (assoc enc :log/landed (fn [v]
                                                            (reset! compact? false)
                                                            (reset! last {:value value :version v :base-bytes size
                                                                          :log-bytes 0 :records 0})))))
                     ops (when (and l (not @compact?) (<= (long log-bytes) room))
                           ;; each operation takes more than 16 bytes of record
                           (diff (:value l) value (max (long min-max-ops) (quot room 16))))
                     ;; a value the codec refuses is refused by the full
                     ;; encode below, naming its path in the state rather
                     ;; than in the record
                     rec (when ops
                           (try (record-encode ops)
                                (catch clojure.lang.ExceptionInfo x
                                  (if (some #(contains? (ex-data x) %) [:duratom/path :duratom/refused])
                                    nil
                                    (throw x)))))]
                 (if (and rec (<= (* 2 (+ (long record-overhead) (long (:size rec)))) room))
                   (assoc rec
                          :log/after version
                          :log/full full
                          ;; what an append of unknown outcome is recognised
                          ;; by: storage shows its record after the base, not
                          ;; its bytes (see duratom.engine/resolve-doubt!)
                          :log/stored? (fn [^bytes stored] (= value (first (replay stored))))
                          :log/landed (fn [v]
                                        (swap! last (fn [l]
                                                      (-> l
                                                          (assoc :value value :version v)
                                                          (update :log-bytes + record-overhead (:size rec))
                                                          (update :records inc))))))
                   (force full))))
     :decode (fn [^bytes bytes]
               (let [[value records base-chars log-chars] (replay bytes)]
                 (reset! decoded {:value value :base-bytes base-chars :log-bytes log-chars :records records})
                 value))
     ;; The version of a decoded state is the engine's to know; it says so
     ;; here. Only the state of the last decode is taken, by identity (a
     ;; concurrent backend-snapshot may have decoded another since).
     :loaded (fn [value version]
               (let [d @decoded]
                 (when (and (some? version) d (identical? value (:value d)))
                   (reset! last (assoc d :version version)))))
     :stats (fn [] (let [l @last] {:log-records (:records l 0) :log-bytes (:log-bytes l 0)}))
     :compact! (fn [] (reset! compact? true))}))
