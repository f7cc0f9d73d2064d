(ns duratom.edn
  "The default encoding of a duratom's value: EDN text as UTF-8 bytes, which
  `decode` reads back equal and type for type, or a refusal before anything
  is written.

  `encode` writes what `pr-str` writes for EDN's own types (nil, booleans,
  strings, characters, longs, doubles, bigints, bigdecimals, ratios,
  keywords, symbols, lists, vectors, maps, sets, `#inst`, `#uuid`), and the
  tags of `duratom.readers` for the rest: `#sorted/map`, `#sorted/set`,
  `#queue`, `#duratom/iobj [x meta]` for collections and symbols carrying
  metadata, the time-literals tags (`#time/instant` ...) for java.time
  values, and `#my.ns.R{...}` for records. Control characters in strings are
  escaped (`\\n`, `\\t`, ..., the others as `\\uXXXX`, NUL included). Seqs
  are written (and read back) as lists; Integer, Short and Byte as integers,
  read back as Long; java.math.BigInteger as a BigInt: each `=` to the
  original, with the same hash. (A Float would read back as a Double, `=`
  but hashed differently: it is refused.)

  Everything else is refused with an ex-info naming the value's class, its
  path in the state and the resource: values with no tag (fns, atoms and
  other references, arrays, regexes, tagged literals, other Java objects),
  keywords and symbols that do not read back as themselves, lone surrogates
  in strings and characters, sorted collections with a custom comparator,
  map and set types other than Clojure's own, nesting deeper than
  `max-depth`, and encodings longer than `:max-bytes`.

  It writes UTF-8 straight into a list of byte chunks that are never copied
  or joined (no StringBuilder, no String), and never touches the global
  `print-method`s, so a large state costs about one copy of its encoded bytes
  on the heap; the chunks cross JNI as they are. The checks ride on the type
  dispatch the writer does anyway: there is no second walk."
  (:require [clojure.edn :as edn]
            [duratom.readers :as readers])
  (:import (clojure.lang IPersistentVector ISeq IPersistentList IPersistentCollection IMeta IRecord
                         PersistentArrayMap PersistentHashMap PersistentHashSet PersistentTreeMap
                         PersistentTreeSet PersistentQueue BigInt Ratio Keyword Symbol ExceptionInfo RT
                         IFn IDeref TaggedLiteral IReduceInit IKVReduce LazySeq)
           (java.lang ClassValue)
           (java.math BigDecimal BigInteger)
           (java.nio.charset StandardCharsets)
           (java.text SimpleDateFormat)
           (java.time DayOfWeek Duration Instant LocalDate LocalDateTime LocalTime Month MonthDay
                      OffsetDateTime OffsetTime Period Year YearMonth ZoneId ZoneOffset ZonedDateTime)
           (java.time.format DateTimeFormatter DateTimeFormatterBuilder SignStyle)
           (java.time.temporal ChronoField)
           (java.util Arrays ArrayList Calendar Date GregorianCalendar HashMap TimeZone UUID)
           (java.util.concurrent ConcurrentHashMap)
           (java.util.concurrent.atomic AtomicReference)
           (java.lang.ref WeakReference)
           (java.util.regex Pattern)))

(set! *warn-on-reflection* true)

;; ------------------------------------------------------------------ limits

(def max-depth
  "The deepest nesting the default codec writes and reads: collections inside
  collections as written, so a collection or symbol carrying metadata counts
  one level more (its `#duratom/iobj [x meta]` tuple). Deeper states are
  refused; deeper stored data is an error at load."
  100000)

;; Up to this depth the codec runs on the caller's thread; deeper, on a thread
;; of its own whose stack is sized for the depth (the caller's may be 512 KiB).
(def ^:private inline-depth 256)

;; Stack per level of nesting, from measurements in a fresh JVM (interpreted
;; frames, the largest): the writer takes up to about 1 KiB per level, the
;; reader up to about 1.3 KiB (sorted maps); twice the writer's and 1.5 times
;; the reader's leave room. Threads reserve it as address space, and the
;; kernel commits only the pages a deep state touches.
(def ^:private encode-bytes-per-level 2048)
(def ^:private decode-bytes-per-level 2048)
;; A deep state is first written on a thread sized for this depth, and only
;; past it on one sized for max-depth.
(def ^:private medium-depth 16384)

(defn default-max-bytes
  "The default `:max-bytes`: 32 MiB, or 1/64 of the JVM's maximum heap when
  that is less. An infinite lazy seq in an asynchronous duratom is realised
  until its encoding reaches this size, and the state holds on to what was
  realised (from a few to about 30 bytes of heap per encoded byte), so the
  default keeps that well below the heap, and small in absolute terms."
  ^long []
  (max 65536 (min (* 32 1024 1024) (quot (.maxMemory (Runtime/getRuntime)) 64))))

;; ---------------------------------------------------------------- refusals

(def ^:private unset (Object.))

(defn- refusal
  "The signal the writer throws for a value it cannot write: `x` is the value
  (or `unset`, then the innermost value being written fills it in), `kind` a
  keyword, `reason` the words. It collects the path while it unwinds."
  ^ExceptionInfo [kind ^String reason x]
  (ex-info reason {::kind kind ::steps (ArrayList.) ::value (doto (object-array 1) (aset 0 x))
                   ::cause (object-array 1)}))

;; ------------------------------------------------------ lazy seqs that threw
;;
;; A lazy seq's body is a once-only fn that lets go of what it captured when
;; first called, so a lazy seq whose realisation threw realises as () the
;; next time: writing it again would store a hole. Such seqs are remembered
;; here, weakly and by identity (equality would realise them), with what
;; they threw, and refused from then on, in this state and in every later
;; state that still holds them.

(def ^:private ^ConcurrentHashMap failed-seqs
  "System/identityHashCode -> [[WeakReference-to-seq Throwable] ...]"
  (ConcurrentHashMap.))

(defn- failed-seq
  "What the realisation of lazy seq `s` threw, or nil when it never threw."
  [s]
  (some (fn [[^WeakReference r t]] (when (identical? s (.get r)) t))
        (.get failed-seqs (System/identityHashCode s))))

(defn- live [entries]
  (not-empty (filterv (fn [[^WeakReference r]] (some? (.get r))) entries)))

(defn- remember-failed!
  "Remembers that realising lazy seq `s` threw `t`."
  [s t]
  (when (> (.size failed-seqs) 4096) ; let go of seqs the GC took
    (doseq [k (vec (.keySet failed-seqs))]
      (.computeIfPresent failed-seqs k (reify java.util.function.BiFunction (apply [_ _ v] (live v))))))
  (.merge failed-seqs (System/identityHashCode s) [[(WeakReference. s) t]]
          (reify java.util.function.BiFunction (apply [_ old new] (into (or (live old) []) new)))))

;; A path step through a map key (rather than a value).
(deftype KeyStep [k])

(defn- named!
  "Makes `x` the value refusal `e` names, unless a deeper one did; returns `e`."
  ^ExceptionInfo [^ExceptionInfo e x]
  (let [^objects v (.valAt (.getData e) ::value)]
    (when (and v (identical? unset (aget v 0))) (aset v 0 x)))
  e)

(defn- step!
  "Adds a step (innermost first) to refusal `e` unwinding through the
  collection that holds `x` at `step`; returns `e`. Other exceptions pass
  unchanged."
  ^ExceptionInfo [^ExceptionInfo e step x]
  (let [d (.getData e)]
    (when-let [^ArrayList steps (.valAt d ::steps)]
      (let [^objects v (.valAt d ::value)]
        (when (identical? unset (aget v 0)) (aset v 0 x)))
      (.add steps step))
    e))

;; Thrown (never with a path) when the nesting passes `inline-depth` on the
;; caller's thread: the encoding starts again on a thread with a large stack.
(def ^:private ^ExceptionInfo needs-deep-stack
  (ex-info "duratom: nesting deeper than the caller's thread can take" {::deep true}))

;; ----------------------------------------------------------------- UTF-8 out

(definterface IUtf8Out
  (^void text [^String s] "Appends `s` as UTF-8.")
  (^void ascii [^long b] "Appends one ASCII byte.")
  (^void quoted [^String s] "Appends `s` as an EDN string literal: quoted and escaped.")
  (^void room [^long k] "Makes room for `k` more bytes in the current chunk.")
  (^void enter [x] "One level deeper, for collection `x`; refuses past the depth limit.")
  (^void leave [] "One level up.")
  (result [] "The bytes written: an Encoded."))

(defrecord Encoded [chunks ^long size]) ; chunks: byte[][] whose concatenation, cut at size, is the text

;; Below half of G1's smallest region (1 MiB), so no chunk is a "humongous"
;; object, which would take whole regions of a small heap.
(def ^:private max-chunk (* 128 1024))

(defn- lone-surrogate
  "The refusal for a lone surrogate at `i` in `s`."
  [^String s ^long i]
  (refusal :lone-surrogate
           (format "it holds a lone surrogate (\\u%04x at index %d), which is not Unicode text and would not read back"
                   (int (.charAt s i)) i)
           unset))

;; Full chunks go to `done`; `buf` is the chunk being filled, `n` its fill.
;; A new chunk is as large as all before it (up to 128 KiB), so a state of any
;; size takes few chunks and nothing is ever copied. `max-bytes` is checked
;; whenever a chunk is full and at the end, so the hot path pays nothing.
(deftype Utf8Out [^java.util.ArrayList done
                  ^:unsynchronized-mutable ^long before ; bytes in `done`
                  ^:unsynchronized-mutable ^bytes buf
                  ^:unsynchronized-mutable ^long n
                  ^long max-bytes
                  ^long depth-limit
                  deep?                                 ; past depth-limit: refuse, not move
                  ^:unsynchronized-mutable ^long depth]
  IUtf8Out
  (room [_ k]
    (when (> (+ n k) (alength buf))
      (when (> (+ before n k) max-bytes)
        (throw (refusal :max-bytes (str "the state's encoding passes :max-bytes (" max-bytes " bytes) here") unset)))
      (when (pos? n)
        (.add done (if (= n (alength buf)) buf (Arrays/copyOf buf (int n))))
        (set! before (+ before n)))
      (set! buf (byte-array (max k 4096 (min max-chunk (+ before n)))))
      (set! n 0)))
  (enter [_ x]
    (set! depth (unchecked-inc depth))
    (when (> depth depth-limit)
      (if deep?
        (throw (refusal :too-deep (str "it nests deeper than " depth-limit " levels (duratom.edn/max-depth)") x))
        (throw needs-deep-stack))))
  (leave [_]
    (set! depth (unchecked-dec depth)))
  (ascii [this b]
    (when (= n (alength buf)) (.room this 1))
    (aset buf n (unchecked-byte b))
    (set! n (unchecked-inc n)))
  (text [this s]
    (let [len (.length s)]
      (loop [i 0]
        (when (< i len)
          ;; room for the longest encoding of one char (a surrogate pair: 4)
          (when (> (+ n 4) (alength buf)) (.room this 4))
          (let [c (int (.charAt s i))]
            (cond
              (< c 0x80)
              (do (aset buf n (unchecked-byte c)) (set! n (unchecked-inc n)) (recur (unchecked-inc i)))

              (< c 0x800)
              (do (aset buf n (unchecked-byte (bit-or 0xC0 (bit-shift-right c 6))))
                  (aset buf (unchecked-inc n) (unchecked-byte (bit-or 0x80 (bit-and c 0x3F))))
                  (set! n (+ n 2))
                  (recur (unchecked-inc i)))

              (and (Character/isHighSurrogate (char c)) (< (inc i) len)
                   (Character/isLowSurrogate (.charAt s (inc i))))
              (let [cp (Character/toCodePoint (char c) (.charAt s (inc i)))]
                (aset buf n (unchecked-byte (bit-or 0xF0 (bit-shift-right cp 18))))
                (aset buf (+ n 1) (unchecked-byte (bit-or 0x80 (bit-and (bit-shift-right cp 12) 0x3F))))
                (aset buf (+ n 2) (unchecked-byte (bit-or 0x80 (bit-and (bit-shift-right cp 6) 0x3F))))
                (aset buf (+ n 3) (unchecked-byte (bit-or 0x80 (bit-and cp 0x3F))))
                (set! n (+ n 4))
                (recur (+ i 2)))

              (Character/isSurrogate (char c)) ; unpaired: not Unicode, cannot be UTF-8
              (throw (lone-surrogate s i))

              :else
              (do (aset buf n (unchecked-byte (bit-or 0xE0 (bit-shift-right c 12))))
                  (aset buf (+ n 1) (unchecked-byte (bit-or 0x80 (bit-and (bit-shift-right c 6) 0x3F))))
                  (aset buf (+ n 2) (unchecked-byte (bit-or 0x80 (bit-and c 0x3F))))
                  (set! n (+ n 3))
                  (recur (unchecked-inc i)))))))))
  (quoted [this s]
    (.ascii this 34)
    ;; Copy runs of plain characters in one go; escape the rest.
    (let [len (.length s)]
      (loop [i 0 run-start 0]
        (if (< i len)
          (let [c (.charAt s i)
                escape (case c
                         \" "\\\""
                         \\ "\\\\"
                         \newline "\\n"
                         \tab "\\t"
                         \return "\\r"
                         \formfeed "\\f"
                         \backspace "\\b"
                         (cond
                           ;; NUL above all, which a PostgreSQL text column refuses
                           (< (int c) 0x20) (format "\\u%04x" (int c))
                           ;; only pairs are Unicode text
                           (Character/isSurrogate c)
                           (when-not (if (Character/isHighSurrogate c)
                                       (and (< (inc i) len) (Character/isLowSurrogate (.charAt s (inc i))))
                                       (and (pos? i) (Character/isHighSurrogate (.charAt s (dec i)))))
                             (throw (lone-surrogate s i)))))]
            (if escape
              (do (when (< run-start i) (.text this (.substring s run-start i)))
                  (.text this escape)
                  (recur (unchecked-inc i) (unchecked-inc i)))
              (recur (unchecked-inc i) run-start)))
          (.text this (if (zero? run-start) s (.substring s run-start))))))
    (.ascii this 34))
  (result [_]
    (when (> (+ before n) max-bytes)
      (throw (refusal :max-bytes (str "the state's encoding passes :max-bytes (" max-bytes " bytes) here") unset)))
    ;; The last chunk is passed as it is: `size` says where the bytes end.
    (let [chunks (make-array Byte/TYPE (inc (.size done)) 0)]
      (dotimes [i (.size done)] (aset ^"[[B" chunks i ^bytes (.get done i)))
      (aset ^"[[B" chunks (.size done) buf)
      (->Encoded chunks (+ before n)))))

;; ----------------------------------------------------- keywords and symbols

(defn- char-table ^booleans [^String chars]
  (let [a (boolean-array 128)]
    (doseq [c chars] (aset a (int c) true))
    a))

(def ^:private letters "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
;; Characters that may start a part (namespace or name) of a plain token ...
(def ^:private ^"[Z" leading-chars (char-table (str letters "*!_?<>=$&%")))
;; ... and that may follow.
(def ^:private ^"[Z" constituent-chars (char-table (str letters "0123456789*!_?<>=$&%+-.'#")))

(defn- plain-token?
  "Whether `s` from `start` is `name` or `ns/name` made only of characters
  that read back as themselves wherever they stand: the fast, common case.
  Anything else is checked by reading it back (`reads-back?`)."
  [^String s ^long start]
  (let [len (.length s)]
    (loop [i start part-start? true slash? false]
      (if (< i len)
        (let [c (int (.charAt s i))]
          (cond (>= c 128) false
                (== c 47) (if (or part-start? slash?) false (recur (unchecked-inc i) true true))
                part-start? (if (aget leading-chars c) (recur (unchecked-inc i) false slash?) false)
                :else (if (aget constituent-chars c) (recur (unchecked-inc i) false slash?) false)))
        (not part-start?)))))

(defn- reads-back?
  "Whether `printed`, read by clojure.edn, gives `x` back (same class, `=`)."
  [x ^String printed]
  (and (let [len (.length printed)]
         (loop [i 0]
           (cond (>= i len) true
                 (Character/isHighSurrogate (.charAt printed i))
                 (and (< (inc i) len) (Character/isLowSurrogate (.charAt printed (inc i))) (recur (+ i 2)))
                 (Character/isLowSurrogate (.charAt printed i)) false
                 :else (recur (inc i)))))
       (try (let [back (edn/read-string {:readers {}} printed)]
              (and (= x back) (identical? (class x) (class back))))
            (catch Exception _ false))))

(defn- unreadable [ctor x]
  (refusal :unreadable
           (str "(" ctor " " (if-let [ns (namespace x)] (str (pr-str ns) " ") "") (pr-str (name x))
                ") does not print readably: it would read back as something else or not at all")
           x))

(defn- write-keyword [^Utf8Out out ^Keyword k]
  (let [s (.toString k)]
    (when-not (or (plain-token? s 1) (reads-back? k s))
      (throw (unreadable "keyword" k)))
    (.text out s)))

(defn- write-symbol [^Utf8Out out ^Symbol sym]
  (let [s (.toString sym)]
    (when-not (or (and (plain-token? s 0) (case s ("nil" "true" "false") false true))
                  (reads-back? sym s))
      (throw (unreadable "symbol" sym)))
    (.text out s)))

;; ----------------------------------------------------------------- scalars

(defn- write-char [^Utf8Out out ^Character ch]
  (let [c (.charValue ch)]
    (case c
      \newline (.text out "\\newline")
      \space (.text out "\\space")
      \tab (.text out "\\tab")
      \backspace (.text out "\\backspace")
      \formfeed (.text out "\\formfeed")
      \return (.text out "\\return")
      (cond
        (Character/isSurrogate c)
        (throw (refusal :lone-surrogate
                        (format "it is a lone surrogate (\\u%04x), which is not Unicode text and would not read back" (int c))
                        ch))
        (< (int c) 0x20) (.text out (format "\\u%04x" (int c)))
        :else (do (.ascii out 92) (.text out (String/valueOf c)))))))

(defn- write-double [^Utf8Out out ^double d]
  (cond (Double/isNaN d) (.text out "##NaN")
        (Double/isInfinite d) (.text out (if (pos? d) "##Inf" "##-Inf"))
        :else (.text out (Double/toString d))))

;; As clojure.core's print-method for Date, which the #inst reader reads.
(def ^:private ^ThreadLocal inst-format
  (ThreadLocal/withInitial
   (reify java.util.function.Supplier
     (get [_] (doto (SimpleDateFormat. "yyyy-MM-dd'T'HH:mm:ss.SSS-00:00")
                (.setTimeZone (TimeZone/getTimeZone "GMT")))))))

(defn- write-inst [^Utf8Out out ^Date d]
  (let [cal (doto (GregorianCalendar. (TimeZone/getTimeZone "GMT")) (.setTime d))]
    ;; #inst reads four-digit years of our era only
    (when-not (and (= GregorianCalendar/AD (.get cal Calendar/ERA)) (<= (.get cal Calendar/YEAR) 9999))
      (throw (refusal :unreadable (str "it lies outside the years 1-9999 that #inst reads (" (.toInstant d) ")") d)))
    (.text out "#inst ")
    (.quoted out (.format ^SimpleDateFormat (.get inst-format) d))))

;; Year/parse reads four digits, or a sign and more: Year.toString writes
;; neither for years past 9999 or before 0.
(def ^:private ^DateTimeFormatter year-format
  (-> (DateTimeFormatterBuilder.) (.appendValue ChronoField/YEAR 4 10 SignStyle/EXCEEDS_PAD) (.toFormatter)))

;; The same for YearMonth, whose toString writes no sign past 9999 either.
(def ^:private ^DateTimeFormatter year-month-format
  (-> (DateTimeFormatterBuilder.) (.appendValue ChronoField/YEAR 4 10 SignStyle/EXCEEDS_PAD)
      (.appendLiteral "-") (.appendValue ChronoField/MONTH_OF_YEAR 2) (.toFormatter)))

(defn- tagged-string
  "A writer of `#tag \"(f x)\"`."
  [^String tag f]
  (fn [^Utf8Out out x]
    (.text out tag)
    (.quoted out (f x))))

;; Exact class -> (fn [out x]): subclasses (java.sql.Timestamp for Date) are
;; not matched, so they are refused rather than read back as the superclass.
(def ^:private ^HashMap scalar-writers
  (let [m (HashMap.)
        as-integer (fn [^Utf8Out out x] (.text out (str x)))
        time (fn [tag] (tagged-string (str "#time/" tag " ") str))]
    (doseq [c [Integer Short Byte]] (.put m c as-integer))
    (.put m BigInt (fn [^Utf8Out out x] (.text out (str x)) (.ascii out 78)))
    (.put m BigInteger (fn [^Utf8Out out x] (.text out (str x)) (.ascii out 78)))
    (.put m BigDecimal (fn [^Utf8Out out x] (.text out (str x)) (.ascii out 77)))
    (.put m Ratio (fn [^Utf8Out out x] (.text out (str x))))
    (.put m Character write-char)
    (.put m Date write-inst)
    (.put m UUID (tagged-string "#uuid " str))
    (.put m Instant (time "instant"))
    (.put m LocalDate (time "date"))
    (.put m LocalDateTime (time "date-time"))
    (.put m LocalTime (time "time"))
    (.put m OffsetDateTime (time "offset-date-time"))
    (.put m OffsetTime (time "offset-time"))
    (.put m ZonedDateTime (time "zoned-date-time"))
    (.put m Duration (time "duration"))
    (.put m Period (time "period"))
    (.put m YearMonth (tagged-string "#time/year-month " #(.format year-month-format ^YearMonth %)))
    (.put m MonthDay (time "month-day"))
    (.put m Month (time "month"))
    (.put m DayOfWeek (time "day-of-week"))
    (.put m Year (tagged-string "#time/year " #(.format year-format ^Year %)))
    ;; ZoneId/of gives back a ZoneOffset for an offset id, a ZoneRegion for the rest
    (.put m ZoneOffset (tagged-string "#time/zone " #(.getId ^ZoneId %)))
    (.put m (class (ZoneId/of "Europe/Paris")) (tagged-string "#time/zone " #(.getId ^ZoneId %)))
    m))

(defn- no-tag
  "The refusal for `x`, which has no EDN form that reads back."
  [x]
  (let [why (cond
              (instance? Pattern x) "a regex: EDN has no regex literal"
              (instance? Float x) "EDN reads it back as a Double, which is = to it but hashes differently"
              (.isArray (class x)) "an array: arrays are mutable and have no EDN form"
              (fn? x) "a function: code has no EDN form"
              (instance? IDeref x) "a reference: its state would have to be stored, not the reference"
              (instance? TaggedLiteral x) (str "a tagged literal, " (pr-str x) ": nothing reads its tag back")
              (instance? IPersistentCollection x)
              "a collection type with no EDN tag: it would read back as another type"
              :else "it has no EDN tag, so it would not read back")]
    (refusal :no-tag why x)))

;; Record class -> its tag "#my.ns.R", or false when the class name does not
;; read back as a tag symbol.
(def ^:private ^ClassValue record-tags
  (proxy [ClassValue] []
    (computeValue [^Class c]
      (let [s (.getName c)]
        (if (and (plain-token? s 0) (neg? (.indexOf s "/")) (pos? (.indexOf s ".")))
          (str "#" s)
          false)))))

;; ------------------------------------------------------------------- writer

(declare write-value write-seq)

(defn- write-items
  "Writes the elements of `coll`, space separated, between `open` and
  `close`. A refusal below gets the element's index (in a set: the element)
  on its path. Few frames per level: deep states recurse through here."
  [^Utf8Out out ^String open coll ^String close set?]
  (.text out open)
  (let [idx (long-array 1)
        f (fn [_ x]
            (let [i (aget idx 0)]
              (when (pos? i) (.ascii out 32))
              (aset idx 0 (unchecked-inc i))
              (try (write-value out x)
                   nil
                   (catch ExceptionInfo e (throw (step! e (if set? x i) x))))))]
    (if (instance? IReduceInit coll)
      (.reduce ^IReduceInit coll f nil)
      (let [it (.iterator ^Iterable coll)]
        (loop []
          (when (.hasNext it)
            (f nil (.next it))
            (recur))))))
  (.text out close))

(defn- write-key [out k]
  (try (write-value out k)
       (catch ExceptionInfo e (throw (step! e (KeyStep. k) k)))))

(defn- write-map [^Utf8Out out m]
  (.ascii out 123)
  (let [f (fn [first? k v]
            (when-not first? (.ascii out 44) (.ascii out 32))
            (write-key out k)
            (.ascii out 32)
            (try (write-value out v)
                 false
                 (catch ExceptionInfo e (throw (step! e k v)))))]
    (if (instance? IKVReduce m)
      (.kvreduce ^IKVReduce m f true)
      (reduce-kv f true m)))
  (.ascii out 125))

(defn- natural-order?
  "Whether `c` orders as the reader's sorted collections do."
  [c]
  (or (identical? c RT/DEFAULT_COMPARATOR) (identical? c compare)))

(defn- custom-comparator [x c]
  (refusal :comparator
           (str "a sorted collection with a custom comparator (" (.getName (class c))
                "): it would read back in natural order")
           x))

(defn- write-coll [^Utf8Out out x]
  (.enter out x)
  (cond
    (instance? IRecord x)
    (let [tag (.get ^ClassValue record-tags (class x))]
      (when-not tag
        (throw (refusal :unreadable "a record whose class name does not read back as a tag" x)))
      (.text out tag)
      (write-map out x))
    (or (instance? PersistentHashMap x) (instance? PersistentArrayMap x)) (write-map out x)
    (instance? IPersistentVector x) (write-items out "[" x "]" false)
    (instance? PersistentHashSet x) (write-items out "#{" x "}" true)
    (instance? PersistentTreeMap x)
    (let [c (.comparator ^PersistentTreeMap x)]
      (when-not (natural-order? c) (throw (custom-comparator x c)))
      (.text out "#sorted/map ")
      (write-map out x))
    (instance? PersistentTreeSet x)
    (let [c (.comparator ^PersistentTreeSet x)]
      (when-not (natural-order? c) (throw (custom-comparator x c)))
      (write-items out "#sorted/set #{" x "}" true))
    (instance? PersistentQueue x) (write-items out "#queue [" x "]" false)
    (instance? IPersistentList x) (write-items out "(" x ")" false)
    (instance? ISeq x) (write-seq out x)
    :else (throw (no-tag x)))
  (.leave out))

(defn- threw-refusal
  "The refusal of lazy seq `s`, whose realisation threw `t` (its cause)."
  ^ExceptionInfo [s ^Throwable t]
  (let [e (refusal :threw
                   (str "a lazy seq whose realisation threw " (.getName (class t))
                        (when-let [m (.getMessage t)] (str " (" m ")"))
                        "; realised again it would read as () and store a hole, so it is refused"
                        " until the state no longer holds it")
                   s)]
    (aset ^objects (.valAt (.getData e) ::cause) 0 t)
    e))

(defn- realize-seq
  "The realised seq at node `s` (nil when empty). A lazy seq whose
  realisation throws is remembered (see failed-seqs) and refused."
  [s]
  (if (instance? LazySeq s)
    (if-let [t (failed-seq s)]
      (throw (threw-refusal s t))
      (try (.seq ^LazySeq s)
           (catch StackOverflowError x (throw x)) ; the encoder retries on a deeper stack
           (catch Throwable t
             (remember-failed! s t)
             (throw (threw-refusal s t)))))
    (.seq ^ISeq s)))

(defn- write-seq
  "Writes seq `x` as a list, node by node, so that every lazy node is
  realised through realize-seq."
  [^Utf8Out out x]
  (.text out "(")
  (loop [s (realize-seq x) i 0]
    (when s
      (when (pos? i) (.ascii out 32))
      (let [v (.first ^ISeq s)]
        (try (write-value out v)
             (catch ExceptionInfo e (throw (step! e i v)))))
      (recur (realize-seq (.more ^ISeq s)) (unchecked-inc i))))
  (.text out ")"))

(defn- write-meta [out x m]
  (try (write-value out m)
       (catch ExceptionInfo e (throw (step! e :duratom/meta m)))))

(defn- write-with-meta
  "`x` (a collection or symbol) carrying metadata `m`: `#duratom/iobj [x m]`."
  [^Utf8Out out x m]
  (.enter out x)
  (.text out "#duratom/iobj [")
  (if (instance? Symbol x) (write-symbol out x) (write-coll out x))
  (.ascii out 32)
  (write-meta out x m)
  (.ascii out 93)
  (.leave out))

(defn- write-value [^Utf8Out out x]
  (cond
    (nil? x) (.text out "nil")
    (instance? String x) (try (.quoted out x)
                              (catch ExceptionInfo e (throw (named! e x))))
    (instance? Keyword x) (write-keyword out x)
    (instance? Long x) (.text out (Long/toString (long x)))
    (instance? IPersistentCollection x)
    (let [m (when (instance? IMeta x) (.meta ^IMeta x))]
      (if (some? m)
        (write-with-meta out x m)
        (write-coll out x)))
    (instance? Boolean x) (.text out (if x "true" "false"))
    (instance? Symbol x) (let [m (.meta ^Symbol x)]
                           (if (some? m)
                             (write-with-meta out x m)
                             (write-symbol out x)))
    (instance? Double x) (write-double out (.doubleValue ^Double x))
    :else (if-let [w (.get scalar-writers (class x))]
            (w out x)
            (throw (no-tag x)))))

;; ---------------------------------------------------- threads with a big stack

(defn- deep-stack-bytes ^long [^long depth ^long per-level]
  (+ (* 8 1024 1024) (* depth per-level)))

(defn- on-deep-stack
  "Runs `f` (with this thread's bindings) on a new thread with a stack of
  `stack-bytes`, and returns what it returns or throws what it throws. Waits
  without being interruptible, and restores this thread's interrupt status."
  [^long stack-bytes f]
  (let [result (AtomicReference.)
        f (bound-fn* f)
        t (Thread. nil
                   ^Runnable (fn [] (.set result (try [true (f)] (catch Throwable e [false e]))))
                   "duratom-deep-codec"
                   stack-bytes)]
    (.setDaemon t true)
    (.start t)
    (loop [interrupted? false]
      (if (try (.join t) true (catch InterruptedException _ false))
        (when interrupted? (.interrupt (Thread/currentThread)))
        (recur true)))
    (let [[ok? v] (.get result)]
      (if ok? v (throw v)))))

;; -------------------------------------------------------------------- encode

(defn- render-step [s]
  (binding [*print-length* 4 *print-level* 2]
    (let [s (if (instance? KeyStep s) (.-k ^KeyStep s) s)
          p (if (and (or (keyword? s) (symbol? s)) (not (reads-back? s (str s))))
              (str "(" (if (keyword? s) "keyword" "symbol") " "
                   (when (namespace s) (str (pr-str (namespace s)) " ")) (pr-str (name s)) ")")
              (pr-str s))]
      (if (> (count p) 60) (str (subs p 0 57) "...") p))))

(defn- render-path
  "The path as `[:users 42 :avatar]`, shortened in the middle when long."
  [steps]
  (let [n (count steps)
        shown (if (> n 12)
                (concat (map render-step (take 6 steps)) [(str "... " (- n 12) " more ...")]
                        (map render-step (drop (- n 6) steps)))
                (map render-step steps))]
    (str "[" (apply str (interpose " " shown)) "]")))

(defn- refused
  "The ex-info callers see for refusal `e` of `value`; `where` names the
  resource. Other exceptions come back as they are."
  [^ExceptionInfo e value where]
  (let [d (ex-data e)]
    (if-let [^ArrayList steps (::steps d)]
      (let [^objects v (::value d)
            x (if (identical? unset (aget v 0)) value (aget v 0))
            path (vec (reverse steps))
            key-steps (vec (keep-indexed (fn [i s] (when (instance? KeyStep s) i)) path))
            key-at (first key-steps)
            plain (mapv #(if (instance? KeyStep %) (.-k ^KeyStep %) %) path)
            resource (when (:resource where) (str (name (:backend where)) " " (:resource where)))]
        (ex-info (str "duratom: " (when resource (str resource ": "))
                      "refused to write the state: a " (if (nil? x) "nil" (.getName (class x)))
                      " at " (render-path path)
                      (when key-at (str " (in the map key at " (render-path (subvec path 0 (inc key-at))) ")"))
                      ": " (.getMessage e) ". Nothing was written.")
                 (cond-> {:duratom/op :encode
                          :duratom/refused (::kind d)
                          :duratom/class (if (nil? x) "nil" (.getName (class x)))
                          :duratom/path plain}
                   key-at (assoc :duratom/in-map-key (subvec plain 0 (inc key-at))
                                 ;; every step that goes into a map key rather than
                                 ;; its value (keys may hold maps with keys in turn)
                                 :duratom/key-steps key-steps)
                   (:backend where) (assoc :duratom/backend (:backend where))
                   (:resource where) (assoc :duratom/resource (:resource where)))
                 (aget ^objects (::cause d) 0)))
      e)))

(defn- encode-with
  "Writes `value`; past `depth-limit` refuses when `last?`, otherwise throws
  `needs-deep-stack`."
  ^Encoded [value size-hint max-bytes depth-limit last?]
  (let [out (Utf8Out. (ArrayList.) 0 (byte-array (max 64 (min (long size-hint) max-chunk))) 0
                      (long max-bytes) (long depth-limit) last? 0)]
    (write-value out value)
    (.result out)))

(defn- encode-deep
  "`encode-with` on a thread whose stack takes `depth-limit` levels."
  ^Encoded [value size-hint max-bytes depth-limit last?]
  (on-deep-stack (deep-stack-bytes (long depth-limit) encode-bytes-per-level)
                 (fn [] (try (encode-with value size-hint max-bytes depth-limit last?)
                             (catch StackOverflowError x
                               (throw (ex-info (str "duratom: the state overflowed the encoder's stack: "
                                                    "a lazy seq in it recurses too deeply, or the nesting does")
                                               {:duratom/op :encode} x)))))))

(defn encode-chunks
  "`value` as UTF-8 EDN with duratom's tags: an Encoded of byte chunks (their
  concatenation is the text) and the total size. `size-hint`: the expected
  size, so that small states fit the first chunk. `opts`: `:max-bytes`
  (default: `default-max-bytes`), and `:backend` and `:resource`, which
  refusals name.

  Throws ex-info, before anything is written, for a value that would not read
  back equal and of the same type; its data holds `:duratom/path`,
  `:duratom/class` and `:duratom/refused` (the kind of refusal)."
  (^Encoded [value ^long size-hint] (encode-chunks value size-hint nil))
  (^Encoded [value ^long size-hint opts]
   (let [max-bytes (long (or (:max-bytes opts) (default-max-bytes)))
         deepest #(encode-deep value size-hint max-bytes max-depth true)
         deep #(try (encode-deep value size-hint max-bytes medium-depth false)
                    (catch ExceptionInfo e
                      (if (identical? e needs-deep-stack) (deepest) (throw e))))]
     (try
       (try (encode-with value size-hint max-bytes inline-depth false)
            (catch StackOverflowError _ (deep)) ; the caller's own stack was nearly full
            (catch ExceptionInfo e
              (if (identical? e needs-deep-stack) (deep) (throw e))))
       (catch ExceptionInfo e (throw (refused e value opts)))))))

(defn encoded-bytes
  "Wraps `bytes` (e.g. what a custom :write returned) as an Encoded."
  ^Encoded [^bytes bytes]
  (->Encoded (doto ^"[[B" (make-array Byte/TYPE 1 0) (aset 0 bytes)) (alength bytes)))

(defn- joined
  "The bytes of an Encoded as one exact array."
  ^bytes [^Encoded e]
  (let [^"[[B" chunks (:chunks e)
        size (long (:size e))
        out (byte-array size)]
    (loop [i 0 at 0]
      (when (< at size)
        (let [^bytes c (aget chunks i)
              k (min (alength c) (- size at))]
          (System/arraycopy c 0 out at k)
          (recur (inc i) (+ at k)))))
    out))

(defn encode
  "`value` as UTF-8 EDN bytes with duratom's tags; refuses as `encode-chunks`."
  (^bytes [value] (encode value nil))
  (^bytes [value opts] (joined (encode-chunks value 256 opts))))

(defn encode-string
  "`value` as EDN text with duratom's tags; refuses as `encode-chunks`."
  ^String [value]
  (String. (encode value) StandardCharsets/UTF_8))

(defn encoder
  "A fn value -> Encoded that sizes its first chunk from the previous
  encoding, so that a steady small state is one chunk. `opts` as for
  `encode-chunks`."
  ([] (encoder nil))
  ([opts]
   (let [last-size (volatile! 256)]
     (fn [value]
       (let [e (encode-chunks value (min max-chunk (+ (long @last-size) (quot (long @last-size) 8))) opts)]
         (vreset! last-size (:size e))
         e)))))

;; -------------------------------------------------------------------- decode

(defn- skip-string
  "The index after the string literal whose opening quote is before `i`."
  ^long [^bytes b ^long i]
  (let [n (alength b)]
    (loop [i i]
      (if (< i n)
        (case (long (aget b i))
          34 (unchecked-inc i)
          92 (recur (+ i 2))
          (recur (unchecked-inc i)))
        i))))

(defn- skip-line ^long [^bytes b ^long i]
  (let [n (alength b)]
    (loop [i i]
      (if (and (< i n) (not= 10 (aget b i))) (recur (unchecked-inc i)) i))))

(defn nesting-depth
  "The deepest nesting of `(`, `[` and `{` in the EDN text `b` (UTF-8),
  outside strings, characters and comments."
  ^long [^bytes b]
  (let [n (alength b)]
    (loop [i 0 d 0 deepest 0]
      (if (< i n)
        (case (long (aget b i))
          (40 91 123) (let [d (unchecked-inc d)] (recur (unchecked-inc i) d (max d deepest)))
          (41 93 125) (recur (unchecked-inc i) (unchecked-dec d) deepest)
          34 (recur (skip-string b (unchecked-inc i)) d deepest)
          59 (recur (skip-line b (unchecked-inc i)) d deepest)
          92 (recur (+ i 2) d deepest) ; a character: \( is no bracket
          (recur (unchecked-inc i) d deepest))
        deepest))))

(defn read-guarded
  "Calls `(read)`, which reads the UTF-8 EDN text `bytes`, with a stack deep
  enough for the text's nesting, and returns what it returns. Text nested
  deeper than `max-depth` is an ex-info naming the depth (data
  `:duratom/depth`) and is not read; deep text is read on a thread with a
  stack sized for it, so reading never ends in a StackOverflowError."
  [^bytes bytes read]
  (let [depth (nesting-depth bytes)
        deep (fn []
               (on-deep-stack (deep-stack-bytes depth decode-bytes-per-level)
                              (fn [] (try (read)
                                          (catch StackOverflowError x
                                            (throw (ex-info (str "the stored data, nested " depth
                                                                 " deep, overflowed the reader's stack")
                                                            {:duratom/depth depth} x)))))))]
    (cond
      (> depth (long max-depth))
      (throw (ex-info (str "the stored data is nested " depth " deep, deeper than duratom's limit of "
                           max-depth " (duratom.edn/max-depth)")
                      {:duratom/depth depth :duratom/max-depth max-depth}))
      (> depth (long inline-depth)) (deep)
      :else (try (read) (catch StackOverflowError _ (deep))))))

(defn decode
  "Reads UTF-8 EDN `bytes` with `duratom.readers/default`, guarded as
  `read-guarded` guards it."
  [^bytes bytes]
  (read-guarded bytes #(edn/read-string readers/default (String. bytes StandardCharsets/UTF_8))))
