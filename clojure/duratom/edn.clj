(ns duratom.edn
  "The default encoding of a duratom's value: EDN text as UTF-8 bytes.

  `encode` prints like `pr-str` with `*print-length*`, `*print-level*`,
  `*print-meta*` and `*print-dup*` bound to nil, except that sorted maps and
  sets, queues and collections carrying metadata get the tags of
  `duratom.readers`, so that `decode` gives back the same types. Control
  characters in strings and characters are written as `\\uXXXX`.

  It writes UTF-8 straight into a list of byte chunks that are never copied
  or joined (no StringBuilder, no String), and never touches the global
  `print-method`s, so a large state costs about one copy of its encoded bytes
  on the heap; the chunks cross JNI as they are."
  (:require [clojure.edn :as edn]
            [duratom.readers :as readers])
  (:import (clojure.lang IPersistentMap IPersistentSet IPersistentVector ISeq IPersistentList
                         PersistentTreeMap PersistentTreeSet PersistentQueue
                         IObj IRecord IPersistentCollection BigInt Ratio)
           (java.math BigDecimal)
           (java.nio.charset StandardCharsets)
           (java.util Arrays)))

(set! *warn-on-reflection* true)

(definterface IUtf8Out
  (^void text [^String s] "Appends `s` as UTF-8.")
  (^void ascii [^long b] "Appends one ASCII byte.")
  (^void quoted [^String s] "Appends `s` as an EDN string literal: quoted and escaped.")
  (^void room [^long k] "Makes room for `k` more bytes in the current chunk.")
  (result [] "The bytes written: an Encoded."))

(defrecord Encoded [chunks ^long size]) ; chunks: byte[][] whose concatenation, cut at size, is the text

;; Below half of G1's smallest region (1 MiB), so no chunk is a "humongous"
;; object, which would take whole regions of a small heap.
(def ^:private max-chunk (* 128 1024))

;; Full chunks go to `done`; `buf` is the chunk being filled, `n` its fill.
;; A new chunk is as large as all before it (up to 128 KiB), so a state of any
;; size takes few chunks and nothing is ever copied.
(deftype Utf8Out [^java.util.ArrayList done
                  ^:unsynchronized-mutable ^long before ; bytes in `done`
                  ^:unsynchronized-mutable ^bytes buf
                  ^:unsynchronized-mutable ^long n]
  IUtf8Out
  (room [_ k]
    (when (> (+ n k) (alength buf))
      (when (pos? n)
        (.add done (if (= n (alength buf)) buf (Arrays/copyOf buf (int n))))
        (set! before (+ before n)))
      (set! buf (byte-array (max k 4096 (min max-chunk (+ before n)))))
      (set! n 0)))
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

              (Character/isSurrogate (char c)) ; unpaired: as String.getBytes does
              (do (aset buf n (unchecked-byte 0x3F)) (set! n (unchecked-inc n)) (recur (unchecked-inc i)))

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
                         ;; NUL above all, which a PostgreSQL text column refuses
                         (when (< (int c) 0x20) (format "\\u%04x" (int c))))]
            (if escape
              (do (when (< run-start i) (.text this (.substring s run-start i)))
                  (.text this escape)
                  (recur (unchecked-inc i) (unchecked-inc i)))
              (recur (unchecked-inc i) run-start)))
          (.text this (if (zero? run-start) s (.substring s run-start))))))
    (.ascii this 34))
  (result [_]
    ;; The last chunk is passed as it is: `size` says where the bytes end.
    (let [chunks (make-array Byte/TYPE (inc (.size done)) 0)]
      (dotimes [i (.size done)] (aset ^"[[B" chunks i ^bytes (.get done i)))
      (aset ^"[[B" chunks (.size done) buf)
      (->Encoded chunks (+ before n)))))

(declare write-value)

(defn- pr-fallback
  "Anything without a fast path prints as `pr` prints it."
  [^IUtf8Out out x]
  (.text out ^String (binding [*print-length* nil *print-level* nil
                               *print-meta* nil *print-dup* nil
                               *print-readably* true]
                       (pr-str x))))

(defn- write-char [^IUtf8Out out ^Character ch]
  (let [c (.charValue ch)]
    (case c
      \newline (.text out "\\newline")
      \space (.text out "\\space")
      \tab (.text out "\\tab")
      \backspace (.text out "\\backspace")
      \formfeed (.text out "\\formfeed")
      \return (.text out "\\return")
      (if (or (< (int c) 0x20) (Character/isSurrogate c))
        (.text out (format "\\u%04x" (int c)))
        (do (.ascii out 92) (.text out (String/valueOf c)))))))

(defn- write-items
  "Writes the elements of `coll`, space separated, between `open` and `close`."
  [^IUtf8Out out ^String open coll ^String close]
  (.text out open)
  (reduce (fn [first? x]
            (when-not first? (.ascii out 32))
            (write-value out x)
            false)
          true
          coll)
  (.text out close))

(defn- write-map [^IUtf8Out out m]
  (.ascii out 123)
  (reduce-kv (fn [first? k v]
               (when-not first? (.ascii out 44) (.ascii out 32))
               (write-value out k)
               (.ascii out 32)
               (write-value out v)
               false)
             true
             m)
  (.ascii out 125))

(defn- write-coll [^IUtf8Out out coll]
  (cond
    (instance? IRecord coll) (pr-fallback out coll)
    (instance? PersistentTreeMap coll) (do (.text out "#sorted/map ") (write-map out coll))
    (instance? IPersistentMap coll) (write-map out coll)
    (instance? IPersistentVector coll) (write-items out "[" coll "]")
    (instance? PersistentTreeSet coll) (write-items out "#sorted/set #{" coll "}")
    (instance? IPersistentSet coll) (write-items out "#{" coll "}")
    (instance? PersistentQueue coll) (write-items out "#queue [" coll "]")
    (or (instance? ISeq coll) (instance? IPersistentList coll)) (write-items out "(" coll ")")
    :else (pr-fallback out coll)))

(defn- write-value [^IUtf8Out out x]
  (cond
    (nil? x) (.text out "nil")
    (string? x) (.quoted out x)
    (keyword? x) (.text out (str x))
    (instance? Long x) (.text out (Long/toString (long x)))
    (instance? IPersistentCollection x)
    (if (and (instance? IObj x) (some? (meta x)) (not (instance? IRecord x)))
      (do (.text out "#duratom/iobj [")
          (write-coll out x)
          (.ascii out 32)
          (write-value out (meta x))
          (.ascii out 93))
      (write-coll out x))
    (boolean? x) (.text out (if x "true" "false"))
    (symbol? x) (.text out (str x))
    (instance? Double x) (let [d (double x)]
                           (cond (Double/isNaN d) (.text out "##NaN")
                                 (Double/isInfinite d) (.text out (if (pos? d) "##Inf" "##-Inf"))
                                 :else (.text out (Double/toString d))))
    (instance? BigInt x) (do (.text out (str x)) (.ascii out 78))
    (instance? BigDecimal x) (do (.text out (str x)) (.ascii out 77))
    (instance? Ratio x) (.text out (str x))
    (char? x) (write-char out x)
    :else (pr-fallback out x)))

(defn encode-chunks
  "`value` as UTF-8 EDN with duratom's tags: an Encoded of byte chunks (their
  concatenation is the text) and the total size. `size-hint`: the expected
  size, so that small states fit the first chunk."
  ^Encoded [value ^long size-hint]
  (let [out (Utf8Out. (java.util.ArrayList.) 0 (byte-array (max 64 size-hint)) 0)]
    (write-value out value)
    (.result out)))

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
  "`value` as UTF-8 EDN bytes with duratom's tags."
  ^bytes [value]
  (joined (encode-chunks value 256)))

(defn encode-string
  "`value` as EDN text with duratom's tags."
  ^String [value]
  (String. (encode value) StandardCharsets/UTF_8))

(defn encoder
  "A fn value -> Encoded that sizes its first chunk from the previous
  encoding, so that a steady small state is one chunk."
  []
  (let [last-size (volatile! 256)]
    (fn [value]
      (let [e (encode-chunks value (min max-chunk (+ (long @last-size) (quot (long @last-size) 8))))]
        (vreset! last-size (:size e))
        e))))

(defn decode
  "Reads UTF-8 EDN `bytes` with `duratom.readers/default`."
  [^bytes bytes]
  (edn/read-string readers/default (String. bytes StandardCharsets/UTF_8)))
