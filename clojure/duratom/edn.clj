(ns duratom.edn
  "The default encoding of a duratom's value: EDN text as UTF-8 bytes.

  `encode` prints like `pr-str` with `*print-length*`, `*print-level*`,
  `*print-meta*` and `*print-dup*` bound to nil, except that sorted maps and
  sets, queues and collections carrying metadata get the tags of
  `duratom.readers`, so that `decode` gives back the same types. It writes
  straight into one buffer, without touching global `print-method`s."
  (:require [clojure.edn :as edn]
            [duratom.readers :as readers])
  (:import (clojure.lang IPersistentMap IPersistentSet IPersistentVector ISeq IPersistentList
                         Keyword Symbol PersistentTreeMap PersistentTreeSet PersistentQueue
                         IObj IRecord IPersistentCollection BigInt Ratio)
           (java.math BigDecimal)
           (java.nio.charset StandardCharsets)))

(set! *warn-on-reflection* true)

(declare write-value)

(defn- pr-fallback
  "Anything without a fast path prints as `pr` prints it."
  [^StringBuilder sb x]
  (.append sb ^String (binding [*print-length* nil *print-level* nil
                                *print-meta* nil *print-dup* nil
                                *print-readably* true]
                        (pr-str x))))

(defn- write-string [^StringBuilder sb ^String s]
  (.append sb \")
  (let [n (.length s)]
    (loop [i 0]
      (when (< i n)
        (let [c (.charAt s i)]
          (case c
            \" (.append sb "\\\"")
            \\ (.append sb "\\\\")
            \newline (.append sb "\\n")
            \tab (.append sb "\\t")
            \return (.append sb "\\r")
            \formfeed (.append sb "\\f")
            \backspace (.append sb "\\b")
            ;; Other control characters (NUL above all, which a PostgreSQL
            ;; text column refuses) as \uXXXX, which EDN readers accept.
            (if (< (int c) 0x20)
              (.append sb (format "\\u%04x" (int c)))
              (.append sb c))))
        (recur (unchecked-inc i)))))
  (.append sb \"))

(defn- write-char [^StringBuilder sb ^Character ch]
  (let [c (.charValue ch)]
    (case c
      \newline (.append sb "\\newline")
      \space (.append sb "\\space")
      \tab (.append sb "\\tab")
      \backspace (.append sb "\\backspace")
      \formfeed (.append sb "\\formfeed")
      \return (.append sb "\\return")
      (if (< (int c) 0x20)
        (.append sb (format "\\u%04x" (int c)))
        (-> sb (.append \\) (.append c))))))

(defn- write-items
  "Writes the elements of `coll`, space separated, between `open` and `close`."
  [^StringBuilder sb ^String open coll ^String close]
  (.append sb open)
  (reduce (fn [first? x]
            (when-not first? (.append sb \space))
            (write-value sb x)
            false)
          true
          coll)
  (.append sb close))

(defn- write-map [^StringBuilder sb m]
  (.append sb \{)
  (reduce-kv (fn [first? k v]
               (when-not first? (.append sb ", "))
               (write-value sb k)
               (.append sb \space)
               (write-value sb v)
               false)
             true
             m)
  (.append sb \}))

(defn- write-coll [^StringBuilder sb coll]
  (cond
    (instance? IRecord coll) (pr-fallback sb coll)
    (instance? PersistentTreeMap coll) (do (.append sb "#sorted/map ") (write-map sb coll))
    (instance? IPersistentMap coll) (write-map sb coll)
    (instance? IPersistentVector coll) (write-items sb "[" coll "]")
    (instance? PersistentTreeSet coll) (write-items sb "#sorted/set #{" coll "}")
    (instance? IPersistentSet coll) (write-items sb "#{" coll "}")
    (instance? PersistentQueue coll) (write-items sb "#queue [" coll "]")
    (or (instance? ISeq coll) (instance? IPersistentList coll)) (write-items sb "(" coll ")")
    :else (pr-fallback sb coll)))

(defn- write-value [^StringBuilder sb x]
  (cond
    (nil? x) (.append sb "nil")
    (string? x) (write-string sb x)
    (keyword? x) (.append sb (str x))
    (instance? Long x) (.append sb (long x))
    (instance? IPersistentCollection x)
    (if (and (instance? IObj x) (some? (meta x)) (not (instance? IRecord x)))
      (do (.append sb "#duratom/iobj [")
          (write-coll sb x)
          (.append sb \space)
          (write-value sb (meta x))
          (.append sb \]))
      (write-coll sb x))
    (boolean? x) (.append sb (boolean x))
    (symbol? x) (.append sb (str x))
    (instance? Double x) (let [d (double x)]
                           (cond (Double/isNaN d) (.append sb "##NaN")
                                 (Double/isInfinite d) (.append sb (if (pos? d) "##Inf" "##-Inf"))
                                 :else (.append sb d)))
    (instance? BigInt x) (-> sb (.append (str x)) (.append \N))
    (instance? BigDecimal x) (-> sb (.append (str x)) (.append \M))
    (instance? Ratio x) (.append sb (str x))
    (char? x) (write-char sb x)
    :else (pr-fallback sb x)))

(defn encode-string
  "`value` as EDN text with duratom's tags (see the namespace docstring)."
  ^String [value]
  (let [sb (StringBuilder. 256)]
    (write-value sb value)
    (.toString sb)))

(defn encode
  "`value` as UTF-8 EDN bytes with duratom's tags."
  ^bytes [value]
  (.getBytes (encode-string value) StandardCharsets/UTF_8))

(defn decode
  "Reads UTF-8 EDN `bytes` with `duratom.readers/default`."
  [^bytes bytes]
  (edn/read-string readers/default (String. bytes StandardCharsets/UTF_8)))
