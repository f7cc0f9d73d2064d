(ns duratom.values-test
  "What goes in comes back, or is refused before it can poison storage.
  Each kind of value that once could not come back (or broke storage) is its
  own test, run in both commit modes against a real file."
  (:require [clojure.edn :as edn]
            [clojure.java.io :as io]
            [clojure.string :as str]
            [clojure.test :refer [deftest is testing]]
            [duratom.core :as d]
            [duratom.edn :as dedn]
            [duratom.readers :as readers]
            [duratom.test-support :as ts])
  (:import (java.io File)
           (java.nio.file Files)
           (java.time DayOfWeek Duration Instant LocalDate LocalDateTime LocalTime Month MonthDay
                      OffsetDateTime OffsetTime Period Year YearMonth ZoneId ZoneOffset ZonedDateTime)))

(defrecord Point [x y])

(def modes [:sync :duratom.core/async])

(defn- file-bytes ^bytes [^File f] (Files/readAllBytes (.toPath f)))

(defn- open [^File f mode init & [rw]]
  (d/file-atom f nil init (merge {:commit-mode mode} rw)))

(defn- reopened
  "The value a fresh duratom on `f` loads (after `flush!` and `destroy`-free release of the old one)."
  [^File f]
  (let [b (d/file-atom f nil ::never-used {:commit-mode :sync})]
    @b))

(defn round-trips!
  "Stores `v` under :v in a duratom in `mode`, reopens the file and checks
  that `v` came back equal and type for type (classes and metadata all the
  way down)."
  [mode v]
  (let [f (io/file (ts/temp-dir) "state.edn")
        a (open f mode {:start true})]
    (swap! a assoc :v v)
    (is (true? (d/flush! a 60000)))
    (let [back (:v (reopened f))]
      (is (= v back) (str mode ": equal after reopening"))
      (is (= (ts/types-of v) (ts/types-of back)) (str mode ": same types and metadata after reopening")))))

(defn refused!
  "Stores `bad` at `path` in a duratom in `mode`. The refusal must name
  `class-name`, the path and the file; memory (sync) and the file (both
  modes) keep the last good state; in async mode flush! throws it, stats
  and the :error-handler see it, and the next good state lands. Returns the
  refusal."
  [mode path bad class-name]
  (let [f (io/file (ts/temp-dir) "state.edn")
        handled (atom [])
        a (open f mode {:users {42 {:name "Ada"}}})
        good @a
        stored (file-bytes f)
        check (fn check
                ([e] (check e f))
                ([^Throwable e f]
                (is (some? e) (str mode ": refused"))
                (when e
                  (let [msg (ex-message e)]
                    (is (str/includes? msg class-name) (str "names the class: " msg))
                    (is (str/includes? msg (pr-str path)) (str "names the path: " msg))
                    (is (str/includes? msg (str f)) (str "names the file: " msg))
                    (is (= path (:duratom/path (ex-data e))) "the path is in the data")))))]
    (if (= mode :sync)
      (let [e (try (swap! a assoc-in path bad) nil (catch Exception e e))]
        (check e)
        (is (= good @a) "memory keeps the last durable state")
        (is (= (seq stored) (seq (file-bytes f))) "the file is untouched")
        (is (= {:users {42 {:name "Ada" :age 36}}} (swap! a assoc-in [:users 42 :age] 36))
            "the next good state is written")
        (is (= @a (reopened f)))
        e)
      (let [_ (swap! a assoc-in path bad)
            e (try (d/flush! a 60000) nil (catch Exception e e))]
        (check e)
        (is (= (seq stored) (seq (file-bytes f))) "the file keeps the last good state")
        (is (pos? (:failures (d/stats a))) "stats counts the failure")
        (let [failures (:failures (d/stats a))]
          (is (thrown? Exception (d/flush! a 60000)) "flush! throws the refusal again")
          (is (= failures (:failures (d/stats a)))
              "a refused state is not encoded and refused again while nothing newer came"))
        (is (str/includes? (str (ex-message (:last-error (d/stats a)))) (pr-str path)) "stats shows the refusal")
        (swap! a update-in (pop path) dissoc (peek path))
        (is (true? (d/flush! a 60000)) "the next good state is written")
        (is (= @a (reopened f)))
        (testing "the :error-handler is called with the refusal"
          (let [f2 (io/file (ts/temp-dir) "handled.edn")
                seen (promise)
                b (open f2 mode {:ok 1} {:error-handler (fn [x _recommit] (deliver seen x))})
                stored2 (file-bytes f2)]
            (swap! b assoc-in path bad)
            (let [x (deref seen 60000 nil)]
              (check x f2))
            (is (= (seq stored2) (seq (file-bytes f2))) "the file is untouched")))
        e))))

;; ------------------------------------------------------ round-trips (Why 1)

(def time-values
  [(Instant/parse "2024-02-29T12:34:56.123456789Z") (LocalDate/of 2024 2 29)
   (LocalDateTime/of 2024 2 29 12 34 56 7) (LocalTime/of 23 59) (OffsetDateTime/parse "2024-02-29T12:34:56+05:30")
   (ZonedDateTime/parse "2024-10-27T02:30+01:00[Europe/Paris]") (Duration/ofSeconds -1 1) (Period/of 1 -2 3)
   (ZoneId/of "Europe/Paris") (ZoneOffset/ofHoursMinutes -3 -30) (ZoneId/of "UTC") (Year/of 2024) (Year/of 12345)
   (Year/of -44) (YearMonth/of 2024 2) (OffsetTime/parse "10:15:30+01:00") (MonthDay/of 2 29)
   Month/FEBRUARY DayOfWeek/THURSDAY])

(deftest java-time-values-round-trip
  (doseq [mode modes]
    (round-trips! mode time-values)
    (testing "each with the tag of the time-literals library, read by duratom.readers/default"
      (let [text (dedn/encode-string (Instant/parse "2024-01-01T00:00:00Z"))]
        (is (= "#time/instant \"2024-01-01T00:00:00Z\"" text))
        (is (= (Instant/parse "2024-01-01T00:00:00Z") (edn/read-string readers/default text))))
      (is (= ["#time/date \"2024-02-29\"" "#time/zone \"Europe/Paris\"" "#time/year \"+12345\""
              "#time/duration \"PT-0.999999999S\""]
             (map dedn/encode-string [(LocalDate/of 2024 2 29) (ZoneId/of "Europe/Paris") (Year/of 12345)
                                      (Duration/ofSeconds -1 1)]))))))

(deftest records-round-trip
  (doseq [mode modes]
    (round-trips! mode {:p (->Point 1 2)
                        :with-extra-key (assoc (->Point 1 2) :z 3)
                        :with-meta (with-meta (->Point [1] {:a 1}) {:source "test"})
                        :nested (->Point (->Point 1 2) (sorted-map 1 2))})
    (is (= "#duratom.values_test.Point{:x 1, :y 2}" (dedn/encode-string (->Point 1 2))))))

(deftest a-record-whose-class-cannot-be-loaded-is-an-error-naming-it
  (doseq [mode modes]
    (let [f (io/file (ts/temp-dir) "record.edn")
          text "{:p #no.such.ns.Rec{:a 1}}"]
      (spit f text)
      (let [e (try (open f mode nil) nil (catch Exception e e))]
        (is (some? e))
        (is (str/includes? (ex-message e) "no.such.ns.Rec") (ex-message e))
        (is (str/includes? (ex-message e) (str f)) (ex-message e)))
      (is (= text (slurp f)) "the file is left untouched"))
    (testing "a class that is not a record is never constructed"
      (let [f (io/file (ts/temp-dir) "file.edn")
            text "{:p #java.io.File{:path \"/etc/passwd\"}}"]
        (spit f text)
        (let [e (try (open f mode nil) nil (catch Exception e e))]
          (is (some? e))
          (is (str/includes? (ex-message e) "is not a record") (ex-message e)))
        (is (= text (slurp f)))))))

;; --------------------------------------------------------- refusals (Why 2)

(deftest a-java-io-file-is-refused
  (doseq [mode modes]
    (refused! mode [:users 42 :avatar] (io/file "/tmp/avatar.png") "java.io.File")))

(deftest a-fn-is-refused
  (doseq [mode modes]
    (refused! mode [:users 42 :on-change] (fn [x] x) "values_test")))

(deftest an-atom-is-refused
  (doseq [mode modes]
    (refused! mode [:users 42 :counter] (atom 0) "clojure.lang.Atom")))

(deftest an-array-is-refused
  (doseq [mode modes]
    (refused! mode [:users 42 :bytes] (byte-array 3) "[B")))

(deftest a-regex-is-refused
  (doseq [mode modes]
    (refused! mode [:users 42 :pattern] #"a+b" "java.util.regex.Pattern")))

(deftest a-tagged-literal-is-refused
  (doseq [mode modes]
    (refused! mode [:users 42 :tagged] (tagged-literal 'my/tag [1 2]) "clojure.lang.TaggedLiteral")))

(deftest a-keyword-with-a-space-is-refused
  (doseq [mode modes]
    (refused! mode [:users 42 :role] (keyword "a b") "clojure.lang.Keyword")))

(deftest the-symbol-nil-is-refused
  (doseq [mode modes]
    (refused! mode [:users 42 :sym] (symbol "nil") "clojure.lang.Symbol")))

(deftest the-symbol-123-is-refused
  (doseq [mode modes]
    (refused! mode [:users 42 :sym] (symbol "123") "clojure.lang.Symbol")))

(deftest a-lone-surrogate-in-a-string-is-refused
  (doseq [mode modes]
    (refused! mode [:users 42 :name] (str "Ada " (char 0xD83D)) "java.lang.String")
    (refused! mode [:users 42 :initial] (char 0xDC00) "java.lang.Character")))

(deftest a-sorted-map-by-a-custom-comparator-is-refused
  (doseq [mode modes]
    (refused! mode [:users 42 :scores] (sorted-map-by > 1 :a 2 :b) "clojure.lang.PersistentTreeMap")
    (refused! mode [:users 42 :tags] (sorted-set-by > 1 2) "clojure.lang.PersistentTreeSet")))

(deftest a-map-key-and-metadata-are-on-the-path
  (let [e (try (dedn/encode {:a {(keyword "x y") 1}}) nil (catch Exception e e))]
    (is (= [:a (keyword "x y")] (:duratom/path (ex-data e))))
    (is (str/includes? (ex-message e) "in the map key at [:a (keyword \"x y\")]") (ex-message e)))
  (let [e (try (dedn/encode {:a (with-meta [1] {:m inc})}) nil (catch Exception e e))]
    (is (= [:a :duratom/meta :m] (:duratom/path (ex-data e))))))

(deftest init-that-would-not-read-back-is-refused-and-nothing-is-written
  (doseq [mode modes]
    (let [f (io/file (ts/temp-dir) "init.edn")
          e (try (open f mode {:when (java.util.Date.) :bad (Object.)}) nil (catch Exception e e))]
      (is (some? e))
      (is (str/includes? (ex-message e) "java.lang.Object at [:bad]") (ex-message e))
      (is (or (not (.exists f)) (zero? (.length f))) "nothing was written"))))

(deftest max-bytes-refuses-a-larger-encoding
  (doseq [mode modes]
    (let [f (io/file (ts/temp-dir) "max.edn")
          a (open f mode {:small 1} {:max-bytes 1000})
          stored (file-bytes f)]
      (if (= mode :sync)
        (is (thrown-with-msg? Exception #":max-bytes \(1000 bytes\)" (swap! a assoc :big (apply str (repeat 2000 "x")))))
        (do (swap! a assoc :big (apply str (repeat 2000 "x")))
            (is (thrown-with-msg? Exception #":max-bytes \(1000 bytes\)" (d/flush! a 60000)))))
      (is (= (seq stored) (seq (file-bytes f))))
      (swap! a assoc :big (apply str (repeat 900 "x")))
      (is (true? (d/flush! a 60000)) "an encoding of at most :max-bytes is written")))
  (is (thrown-with-msg? IllegalArgumentException #":max-bytes must be a positive integer"
                        (open (io/file (ts/temp-dir) "x.edn") :sync 1 {:max-bytes -1}))))

(deftest normalised-numbers-and-seqs-read-back-equal
  (doseq [mode modes]
    (let [f (io/file (ts/temp-dir) "n.edn")
          v {:int (int 7) :short (short 7) :byte (byte 7) :biginteger (biginteger 7)
             :lazy (map inc [1 2 3]) :range (range 3)}
          a (open f mode v)]
      (is (true? (d/flush! a 60000)))
      (let [back (reopened f)]
        (is (= v back))
        (is (= (hash v) (hash back)))
        (is (= [Long Long Long clojure.lang.BigInt] (map (comp class back) [:int :short :byte :biginteger])))))
    (testing "a Float is refused: it would read back as a Double, which hashes differently"
      (refused! mode [:users 42 :ratio] (float 1.5) "java.lang.Float"))))

;; ------------------------------------- child JVMs with default options (Why 3)

(defn- child
  "Runs `(duratom.values-child/<call>)` in a child JVM started with default
  options (no -Xss, no -Xmx); returns its stdout lines."
  [call & opts]
  (str/split-lines (apply ts/child-output (str "(require 'duratom.values-child) (duratom.values-child/" call ")"
                                               " (shutdown-agents) (System/exit 0)")
                          opts)))

(defn- deep-round-trip! [mode kind n]
  (let [f (io/file (ts/temp-dir) "deep.edn")
        written (child (str "write-deep \"" f "\" " mode " " kind " " n))]
    (is (= ["OK"] written) (str n " deep, " mode ": written"))
    (is (= ["EQUAL"] (child (str "read-deep \"" f "\" " kind " " n)))
        (str n " deep, " mode ": loads in a fresh JVM and is equal, kind for kind"))))

(deftest a-state-5000-deep-loads-in-a-jvm-with-default-options
  (doseq [mode modes]
    (deep-round-trip! mode :vector 5000)))

(deftest a-state-50000-deep-is-written-by-a-sync-swap-and-loads
  (doseq [mode modes]
    (deep-round-trip! mode :vector 50000)))

(deftest deep-mixed-states-round-trip
  (doseq [mode modes]
    (deep-round-trip! mode :mixed 10000)
    (deep-round-trip! mode :mixed 30000)))

(deftest deeper-than-the-limit-is-refused
  (doseq [mode modes]
    (let [f (io/file (ts/temp-dir) "too-deep.edn")
          [line] (child (str "write-deep \"" f "\" " mode " :vector " (inc dedn/max-depth)))]
      (is (str/starts-with? line "REFUSED") line)
      (is (str/includes? line (str "deeper than " dedn/max-depth " levels")) line)
      (is (str/includes? line (str f)) line)
      (is (= {:start 1} (edn/read-string readers/default (slurp f))) "the file keeps the last good state"))))

(deftest a-file-nested-deeper-than-the-limit-is-an-error-naming-file-and-depth
  (let [f (io/file (ts/temp-dir) "deep-file.edn")
        depth (+ dedn/max-depth 5)
        text (str (apply str (repeat depth "[")) (apply str (repeat depth "]")))]
    (spit f text)
    (let [[line] (child (str "read-deep \"" f "\" :vector 0"))]
      (is (str/starts-with? line "ERROR clojure.lang.ExceptionInfo") line)
      (is (str/includes? line (str f)) line)
      (is (str/includes? line (str "nested " depth " deep")) line))
    (is (= text (slurp f)) "the file is left untouched")
    (testing "in this JVM too, with the depth in the data"
      (let [e (try (d/file-atom f) nil (catch Exception e e))]
        (is (= depth (:duratom/depth (ex-data (.getCause ^Exception e)))))))))

(deftest an-infinite-lazy-seq-leaves-the-application-running
  (let [dir (ts/temp-dir)
        lines (child (str "infinite-seqs \"" dir "\""))
        runs (remove #(str/starts-with? % "APP") lines)
        [_ rounds status] (str/split (last lines) #" " 3)]
    (is (= 10 (count runs)) (str "every seq, both modes, ran: " (pr-str lines)))
    (doseq [line runs]
      (is (re-find #"\| REFUSED clojure.lang.ExceptionInfo .*\[:events \d+\]: .*:max-bytes" line) line)
      (is (str/includes? line "| next: true {:ok 1}") line))
    (is (= "ok" status) (str "the rest of the application ran without an error: " (last lines)))
    (is (pos? (Long/parseLong rounds)))))

(deftest a-lazy-seq-that-threw-is-never-stored
  (doseq [mode modes]
    (testing (str mode)
      (let [f (io/file (ts/temp-dir) "state.edn")
            a (open f mode {:n 0})
            stored (file-bytes f)
            bad (map #(Long/parseLong %) ["1" "x"])
            outcome (fn [thunk] (try (thunk) nil (catch Exception e e)))
            write! (fn [g] (if (= mode :sync)
                             (outcome #(swap! a g))
                             (do (swap! a g) (outcome #(d/flush! a 60000)))))
            check (fn [^Throwable e what]
                    (is (some? e) (str what ": refused"))
                    (when e
                      (is (= [:xs] (:duratom/path (ex-data e))) (str what ": the path is in the data"))
                      (is (str/includes? (ex-message e) "[:xs]") (str what ": names the path"))
                      (is (str/includes? (ex-message e) "NumberFormatException")
                          (str what ": names the original exception: " (ex-message e)))
                      (is (some #(instance? NumberFormatException %)
                                (take-while some? (iterate #(.getCause ^Throwable %) e)))
                          (str what ": keeps it among the causes"))))]
        (check (write! #(assoc % :xs bad)) "the state that holds it")
        (is (= (seq stored) (seq (file-bytes f))) "the file is untouched")
        (testing "the seq is broken now: realised again it reads as ()"
          (is (nil? (seq bad))))
        (if (= mode :sync)
          (check (write! #(assoc % :xs bad)) "the same seq, put in again")
          (check (write! #(assoc % :y 1)) "a later state that still holds the same seq"))
        (is (= (seq stored) (seq (file-bytes f))) "the file is still untouched")
        (is (nil? (write! #(dissoc % :xs))) "once the seq is replaced, the state is written")
        (is (= (dissoc @a :xs) (reopened f)))
        (is (not (contains? (reopened f) :xs)))))))
