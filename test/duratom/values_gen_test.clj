(ns duratom.values-gen-test
  "Generative: nested values drawn from every type the default
  codec supports and every type it refuses. Each case either round-trips
  through a real file, a close and a reopen (equal, and kind for kind, class
  for class, with metadata, sortedness and record types), or is refused with
  memory (sync) and the file (both modes) unchanged, and the refusal's path
  leads to a value that is refused. Whether a value is refused is decided
  here, from the documented rules (doc/codec.md), not by asking the codec."
  (:require [clojure.edn :as edn]
            [clojure.java.io :as io]
            [clojure.string :as str]
            [clojure.test :refer [deftest is testing]]
            [clojure.test.check :as tc]
            [clojure.test.check.generators :as gen]
            [clojure.test.check.properties :as prop]
            [clojure.walk :as walk]
            [duratom.core :as d]
            [duratom.edn :as dedn]
            [duratom.test-support :as ts])
  (:import (clojure.lang IDeref PersistentQueue RT)
           (java.io File)
           (java.nio.file Files)
           (java.time DayOfWeek Duration Instant LocalDate LocalDateTime LocalTime Month MonthDay
                      OffsetDateTime OffsetTime Period Year YearMonth ZoneId ZoneOffset ZonedDateTime)
           (java.util Date)))

(defrecord Point [x y])

;; ------------------------------------------------------------- the oracle

(defn- lone-surrogate? [^String s]
  (let [n (.length s)]
    (loop [i 0]
      (cond (>= i n) false
            (and (Character/isHighSurrogate (.charAt s i)) (< (inc i) n)
                 (Character/isLowSurrogate (.charAt s (inc i)))) (recur (+ i 2))
            (Character/isSurrogate (.charAt s i)) true
            :else (recur (inc i))))))

(defn- reads-back?
  "The definition of a readable keyword or symbol: clojure.edn reads its
  printed form back as itself."
  [x]
  (and (not (lone-surrogate? (str x)))
       (try (let [back (edn/read-string {:readers {}} (str x))]
              (and (= x back) (= (class x) (class back))))
            (catch Exception _ false))))

(def ^:private time-classes
  #{Instant LocalDate LocalDateTime LocalTime OffsetDateTime OffsetTime ZonedDateTime Duration Period
    Year YearMonth MonthDay Month DayOfWeek ZoneOffset (class (ZoneId/of "Europe/Paris"))})

(def ^:private scalar-classes
  (into #{Long Double Boolean String Character clojure.lang.BigInt BigDecimal clojure.lang.Ratio
          java.util.UUID Date}
        time-classes))

(defn- natural? [c] (or (identical? c RT/DEFAULT_COMPARATOR) (identical? c compare)))

(defn refused?
  "Whether the documented rules (doc/codec.md) refuse `x`."
  [x]
  (cond
    (nil? x) false
    (or (keyword? x) (symbol? x)) (or (not (reads-back? x)) (refused? (meta x)))
    (string? x) (lone-surrogate? x)
    (char? x) (Character/isSurrogate (char x))
    (instance? Date x) (or (not= Date (class x))
                           (not (<= 1 (.getYear (.atZone (.toInstant ^Date x) (ZoneId/of "UTC"))) 9999)))
    (instance? clojure.lang.IPersistentCollection x)
    (or (not (or (record? x)
                 (#{clojure.lang.PersistentArrayMap clojure.lang.PersistentHashMap clojure.lang.PersistentHashSet
                    PersistentQueue} (class x))
                 (vector? x) (seq? x) (list? x)
                 (and (sorted? x) (natural? (.comparator ^clojure.lang.Sorted x)))))
        (and (sorted? x) (not (natural? (.comparator ^clojure.lang.Sorted x))))
        (refused? (meta x))
        (boolean (some refused? (if (map? x) (mapcat identity x) x))))
    :else (not (contains? scalar-classes (class x)))))

(defn- kind [x]
  (cond (record? x) (class x)
        (instance? PersistentQueue x) :queue
        (and (map? x) (sorted? x)) :sorted-map
        (map? x) :map
        (and (set? x) (sorted? x)) :sorted-set
        (set? x) :set
        (vector? x) :vector
        (sequential? x) :list))

(defn shape
  "`x` with every leaf replaced by its class and every collection by its
  kind (seqs and lists are one kind: seqs read back as lists) and metadata."
  [x]
  (cond (map? x) [(kind x) (shape (meta x)) (into {} (map (fn [[k v]] [k [(shape k) (shape v)]]) x))]
        (set? x) [(kind x) (shape (meta x)) (set (map shape x))]
        (coll? x) [(kind x) (shape (meta x)) (mapv shape x)]
        (symbol? x) [:symbol (shape (meta x))]
        :else (class x)))

;; ------------------------------------------------------------- generators

(def ^:private gen-code-point
  (gen/one-of [(gen/choose 32 126) (gen/choose 0 0xD7FF) (gen/choose 0xE000 0x10FFFF)]))

(def ^:private gen-unicode-string
  (gen/fmap (fn [cps] (String. (int-array cps) 0 (count cps))) (gen/vector gen-code-point 0 12)))

(def ^:private gen-string (gen/one-of [gen/string-alphanumeric gen/string gen-unicode-string]))

(def ^:private gen-char
  (gen/fmap char (gen/one-of [(gen/choose 0 127) (gen/choose 0 0xD7FF) (gen/choose 0xE000 0xFFFF)])))

(def ^:private gen-name
  "Names for keywords and symbols: mostly plain, some anything at all (the
  oracle decides which read back)."
  (gen/frequency [[6 (gen/fmap name gen/keyword)]
                  [2 (gen/elements ["a.b" "a-b" "-a" "+a" "*x*" "x?" "a'b" "a#b" "1" "+1" ".5" "a:b" "nil" "true"
                                    "false" "/" "a b" "a,b" "" "a/b" "caf\u00e9" "\u00e9" "a\"b" "a;b" "a(b" ":a"])]
                  [1 gen-string]]))

(def ^:private gen-keyword
  (gen/one-of [gen/keyword gen/keyword-ns
               (gen/fmap keyword gen-name)
               (gen/fmap (fn [[n m]] (keyword n m)) (gen/tuple gen-name gen-name))]))

(def ^:private gen-symbol
  (gen/one-of [gen/symbol gen/symbol-ns
               (gen/fmap symbol gen-name)
               (gen/fmap (fn [[n m]] (symbol n m)) (gen/tuple gen-name gen-name))]))

(def ^:private zone-ids
  (into ["UTC" "Z" "GMT+01:00" "UTC-03:30" "+05:45"] (take 80 (sort (ZoneId/getAvailableZoneIds)))))

(def ^:private gen-zone
  (gen/one-of [(gen/fmap #(ZoneId/of %) (gen/elements zone-ids))
               (gen/fmap #(ZoneOffset/ofTotalSeconds %) (gen/choose -64800 64800))]))

(def ^:private gen-local-date
  (gen/one-of [(gen/fmap #(LocalDate/ofEpochDay %) (gen/large-integer* {:min -365243219162 :max 365241780471}))
               (gen/fmap #(LocalDate/ofEpochDay %) (gen/choose -800000 800000))]))

(def ^:private gen-local-time
  (gen/one-of [(gen/fmap #(LocalTime/ofNanoOfDay %) (gen/large-integer* {:min 0 :max 86399999999999}))
               (gen/fmap #(LocalTime/ofSecondOfDay %) (gen/choose 0 86399))]))

(def ^:private gen-ldt (gen/fmap (fn [[dt t]] (LocalDateTime/of ^LocalDate dt ^LocalTime t)) (gen/tuple gen-local-date gen-local-time)))

(def ^:private gen-offset (gen/fmap #(ZoneOffset/ofTotalSeconds %) (gen/choose -64800 64800)))

(def ^:private gen-time
  (gen/one-of
   [(gen/fmap (fn [[s n]] (Instant/ofEpochSecond s n))
              (gen/tuple (gen/large-integer* {:min -31557014167219200 :max 31556889864403199}) (gen/choose 0 999999999)))
    gen-local-date gen-local-time gen-ldt
    (gen/fmap (fn [[dt o]] (OffsetDateTime/of ^LocalDateTime dt ^ZoneOffset o)) (gen/tuple gen-ldt gen-offset))
    (gen/fmap (fn [[t o]] (OffsetTime/of ^LocalTime t ^ZoneOffset o)) (gen/tuple gen-local-time gen-offset))
    (gen/fmap (fn [[days t z]] (ZonedDateTime/of (LocalDateTime/of (LocalDate/ofEpochDay days) ^LocalTime t) ^ZoneId z))
              (gen/tuple (gen/choose -800000 800000) gen-local-time gen-zone))
    (gen/fmap (fn [[s n]] (Duration/ofSeconds s n)) (gen/tuple gen/large-integer (gen/choose 0 999999999)))
    (gen/fmap (fn [[y m dd]] (Period/of y m dd)) (gen/tuple gen/small-integer gen/small-integer (gen/large-integer* {:min Integer/MIN_VALUE :max Integer/MAX_VALUE})))
    (gen/fmap #(Year/of %) (gen/one-of [(gen/choose -999999999 999999999) (gen/choose -50 12000)]))
    (gen/fmap (fn [[y m]] (YearMonth/of (int y) (int m))) (gen/tuple (gen/choose -999999999 999999999) (gen/choose 1 12)))
    (gen/fmap (fn [[m dd]] (MonthDay/of (int m) (int (min dd (.maxLength (Month/of m)))))) (gen/tuple (gen/choose 1 12) (gen/choose 1 31)))
    (gen/elements (Month/values)) (gen/elements (DayOfWeek/values))
    gen-zone]))

(def ^:private gen-supported-scalar
  (gen/one-of
   [(gen/return nil) gen/boolean gen/large-integer (gen/double* {:NaN? false})
    (gen/fmap bigint gen/large-integer) gen/size-bounded-bigint
    (gen/fmap (fn [[u s]] (BigDecimal. (biginteger u) (int s))) (gen/tuple gen/large-integer (gen/choose -30 30)))
    gen/ratio gen-char gen-string gen-keyword gen-symbol gen/uuid
    (gen/fmap #(Date. (long %)) (gen/large-integer* {:min -62104060800000 :max 253370764800000}))
    gen-time]))

(def ^:private refused-scalars
  [(fn [x] x) (atom 1) (ref 1) (agent 1) (volatile! 1) (delay 1) (promise) (object-array 1) (byte-array 2)
   #"a+b" (Object.) (io/file "/tmp/x") (tagged-literal 'my/tag [1]) (float 1.5) (java.sql.Timestamp. 0)
   (java.util.HashMap. {1 2}) (java.util.ArrayList. [1]) (sorted-map-by > 1 2) (sorted-set-by > 1 2)
   (struct (create-struct :a) 1) (keyword "a b") (symbol "nil") (symbol "123") (str "lone " (char 0xD800))
   (char 0xDFFF) (Date. 253402300800000) (Date. -62198755200000) (Thread.) *ns* #'clojure.core/inc
   (transient []) (StringBuilder. "sb") (java.util.concurrent.atomic.AtomicLong. 1)])

(def ^:private gen-leaf
  (gen/frequency [[12 gen-supported-scalar]
                  [1 (gen/elements refused-scalars)]]))

(defn- gen-sortable
  "Elements a sorted collection can hold: one comparable type at a time."
  [f]
  (gen/one-of [(f gen/large-integer) (f gen-string) (f gen/keyword)]))

(defn- unsorted
  "`x` with every sorted map and set inside made a hash map and set. Map keys
  and set elements are compared with `=`, and `=` between a sorted set of
  keywords and another set of strings throws ClassCastException (Clojure's
  own behaviour, not duratom's), so generated keys and elements hold none."
  [x]
  (walk/postwalk #(cond (and (sorted? %) (map? %)) (into {} %)
                        (sorted? %) (into #{} %)
                        :else %)
                 x))

(defn- gen-container [inner]
  (gen/one-of
   [(gen/vector inner 0 6)
    (gen/fmap #(apply list %) (gen/vector inner 0 6))
    (gen/fmap #(map identity %) (gen/vector inner 0 6)) ; a lazy seq
    (gen/map (gen/fmap unsorted (gen/one-of [gen-supported-scalar inner])) inner {:max-elements 6})
    (gen/set (gen/fmap unsorted inner) {:max-elements 6})
    (gen-sortable (fn [g] (gen/fmap #(into (sorted-map) %) (gen/map g inner {:max-elements 6}))))
    (gen-sortable (fn [g] (gen/fmap #(into (sorted-set) %) (gen/vector g 0 6))))
    (gen/fmap #(into PersistentQueue/EMPTY %) (gen/vector inner 0 6))
    (gen/fmap (fn [[x y]] (->Point x y)) (gen/tuple inner inner))
    (gen/fmap (fn [[c m]] (with-meta c m)) (gen/tuple (gen/vector inner 0 4) (gen/map gen/keyword inner {:max-elements 2})))
    (gen/fmap (fn [[c m]] (with-meta c m)) (gen/tuple (gen/map gen/keyword inner {:max-elements 4})
                                                      (gen/map gen/keyword gen-leaf {:max-elements 2})))
    (gen/fmap (fn [[s m]] (with-meta s m)) (gen/tuple gen/symbol (gen/map gen/keyword gen-leaf {:min-elements 1 :max-elements 2})))]))

(def gen-value (gen/recursive-gen gen-container gen-leaf))

;; --------------------------------------------------------------- the cases

(defn- file-bytes ^bytes [^File f] (when (.exists f) (Files/readAllBytes (.toPath f))))

(defn- navigate
  "The value at `path` in `state`; `key-steps`: the indices of the steps that
  go into a map key rather than its value."
  [state path key-steps]
  (reduce (fn [x [i step]]
            (cond
              (= step :duratom/meta) (meta x)
              (and (contains? (set key-steps) i) (map? x)) (some #(when (= % step) %) (keys x))
              (map? x) (get x step)
              (set? x) (get x step)
              :else (nth (seq x) step)))
          state
          (map-indexed vector path)))

(defn- check-refusal
  "nil when `e` is a good refusal of `state`: a message naming a class, a
  path and the file, and a path leading to a refused value of that class
  (or, for :max-bytes, to somewhere in the state)."
  [^Throwable e state ^File f]
  (let [e (loop [^Throwable e e] (if (and e (not (:duratom/path (ex-data e)))) (recur (.getCause e)) e))
        {:duratom/keys [path class refused key-steps]} (ex-data e)]
    (cond
      (nil? e) "no refusal with a path"
      (not (str/includes? (ex-message e) (str f))) (str "the message does not name the file: " (ex-message e))
      (not (str/includes? (ex-message e) class)) (str "the message does not name the class: " (ex-message e))
      (= refused :max-bytes) nil
      :else (let [x (try (navigate state path key-steps) (catch Exception x x))]
              (cond (not= class (if (nil? x) "nil" (.getName (clojure.core/class x))))
                    (str "the path " (pr-str path) " leads to a " (clojure.core/class x) ", not a " class)
                    (not (refused? x)) (str "the path leads to a value that is not refused: " (pr-str x))
                    :else nil)))))

(def ^:private case-dir (delay (ts/temp-dir)))
(def ^:private case-counter (atom 0))

(defn run-case
  "One case: a duratom in `mode` holding a good state gets `v` (and
  `max-bytes`). Returns nil when it behaves, else what went wrong."
  [mode v max-bytes]
  (let [f (io/file @case-dir (str "case-" (swap! case-counter inc) ".edn"))
        good {:base [1 "one" :one]}
        a (d/file-atom f nil good (cond-> {:commit-mode mode} max-bytes (assoc :max-bytes max-bytes)))
        stored (file-bytes f)
        state (assoc good :v v)
        too-big? (and max-bytes (not (refused? v))
                      (> (count (dedn/encode state {:max-bytes Long/MAX_VALUE})) (long max-bytes)))
        expect-refusal? (or (refused? v) too-big?)
        outcome (if (= mode :sync)
                  (try (swap! a assoc :v v) nil (catch Exception e e))
                  (do (swap! a assoc :v v)
                      (try (d/flush! a 60000) nil (catch Exception e e))))]
    (try
      (if expect-refusal?
        (or (when-not outcome "it was written, but should have been refused")
            (check-refusal outcome state f)
            (when-not (= (seq stored) (seq (file-bytes f))) "the file changed")
            (when (and (= mode :sync) (not= good @a)) "memory changed"))
        (or (when outcome (str "refused: " (ex-message outcome)))
            (let [b (d/file-atom f nil ::unused {:commit-mode :sync})
                  back (:v @b)]
              (d/destroy b)
              (cond (not= v back) (str "read back different: " (pr-str back))
                    (not= (shape v) (shape back)) (str "read back with other types: " (pr-str (shape back)))))))
      ;; also stops an asynchronous writer that keeps retrying a refused state
      (finally (d/destroy a)))))

(def ^:private failures (atom []))
(def ^:private outcomes (atom {}))

(defn- property [mode]
  (prop/for-all [v gen-value
                 max-bytes (gen/frequency [[9 (gen/return nil)] [1 (gen/choose 30 400)]])]
    (let [problem (try (run-case mode v max-bytes) (catch Throwable t (str "threw " t)))]
      (swap! outcomes update (if (refused? v) :refused :supported) (fnil inc 0))
      (when problem (swap! failures conj {:mode mode :value v :max-bytes max-bytes :problem problem}))
      (nil? problem))))

(def ^:private cases-per-seed 400) ; x 3 seeds x 2 modes = 2,400 cases per run

(deftest every-value-round-trips-or-is-refused
  (let [random-seed (System/currentTimeMillis)]
    (doseq [mode [:sync :duratom.core/async]
            seed [20261126 10 random-seed]]
      (reset! failures [])
      (let [result (tc/quick-check cases-per-seed (property mode) :seed seed :max-size 40)]
        (is (true? (:pass? result))
            (str mode ", seed " seed (when (= seed random-seed) " (random)") ": "
                 (pr-str (select-keys result [:num-tests :fail :shrunk]))
                 "\nfirst failure: " (pr-str (first @failures))))
        (is (= cases-per-seed (:num-tests result)))))
    (println "values-gen-test:" (pr-str @outcomes) "cases (refused values, supported values; shrinking included)")
    (is (< 500 (:refused @outcomes 0)) "many cases are refusals")
    (is (< 500 (:supported @outcomes 0)) "many cases round-trip")))

(deftest the-oracle-tells-refused-from-supported
  (testing "a sanity check of the test's own rules"
    (is (not (refused? {:a [1 2.5 "x" \c :k 'sym (Instant/now) (->Point 1 2)]})))
    (is (every? refused? refused-scalars))
    (is (refused? [1 {:a (atom 1)}]))
    (is (refused? (with-meta [1] {:f inc})))))
