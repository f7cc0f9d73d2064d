(ns duratom.rw
  "The `:rw` maps: the default read/write functions of each backend, with the
  signatures the original library gave them, and the codecs that turn an
  `:rw` map into `encode` (value -> duratom.edn.Encoded, byte chunks) and
  `decode` (bytes -> value).

  With a default `:rw` the value is encoded straight to EDN bytes
  (`duratom.edn`), which refuses, before anything is written, a value that
  would not read back equal and of the same type, and an encoding longer than
  `:max-bytes`. A custom `:read`/`:write` is called exactly as the original
  library called it, so nippy and friends keep working unchanged; what it
  writes is the user's own, unchecked."
  (:require [clojure.java.io :as io]
            [duratom.edn :as dedn]
            [duratom.log :as dlog])
  (:import (java.io ByteArrayInputStream File PushbackReader InputStream)
           (java.nio.charset StandardCharsets)
           (java.nio.file Files)))

(set! *warn-on-reflection* true)

;; ------------------------------------------------- the original's signatures

(defn pr-str-fully
  "`value` as EDN text with duratom's tags, unaffected by `*print-length*` and
  friends. The default `:write` for PostgreSQL, SQLite, Redis and S3."
  ^String [value]
  (dedn/encode-string value))

(defn read-edn-string
  "Reads EDN text with `duratom.readers/default`. The default `:read` for
  PostgreSQL, SQLite and Redis."
  [^String s]
  (dedn/decode (.getBytes s StandardCharsets/UTF_8)))

(defn write-edn-file
  "Writes `value` as EDN to `file`. The default file `:write`: `(fn [file value])`."
  [file value]
  (with-open [out (io/output-stream file)]
    (.write out (dedn/encode value))))

(defn read-edn-object
  "Reads one EDN value from `source` (anything `clojure.java.io/reader` takes).
  The default file and S3 `:read`; S3 calls it with the object size first."
  ([source]
   (with-open [r (PushbackReader. (io/reader source :encoding "UTF-8"))]
     (clojure.edn/read duratom.readers/default r)))
  ([_size source]
   (read-edn-object source)))

(def default-file-rw
  "File `:rw`: `:read` gets the file, `:write` gets the file and the value.
  Like every default `:rw`, it names the default read location and commit
  mode (`:duratom.core/memory`, `:duratom.core/async`), as the original's did."
  {:read read-edn-object
   :write write-edn-file
   :read-from :duratom.core/memory
   :commit-mode :duratom.core/async})

(def default-postgres-rw
  "PostgreSQL `:rw`: `:write` returns a String (or bytes), `:read` gets what is
  stored (a String for `:text`, bytes for `:bytea`)."
  {:read read-edn-string
   :write pr-str-fully
   :column-type :text
   :read-from :duratom.core/memory
   :commit-mode :duratom.core/async})

(def default-sqlite-rw
  "SQLite `:rw`: as PostgreSQL's, `:write` returns a String (or bytes), `:read`
  gets what is stored (a String for `:text`, bytes for `:blob`)."
  {:read read-edn-string
   :write pr-str-fully
   :column-type :text
   :read-from :duratom.core/memory
   :commit-mode :duratom.core/async})

(def default-redis-rw
  "Redis `:rw`: EDN text under the key, as the original's default (carmine
  stored the String `:write` returned as it is). A custom `:write` may return
  any value and `:read` gets what carmine's GET would give (see
  `redis-codec`): `{:read identity :write identity}` stores nippy as carmine did."
  {:read read-edn-string
   :write pr-str-fully
   :read-from :duratom.core/memory
   :commit-mode :duratom.core/async})

(def default-s3-rw
  "S3 `:rw`: `:write` returns a String (or bytes), `:read` gets the object size
  and an InputStream of its bytes. `:metadata` is passed on as object metadata."
  {:read read-edn-object
   :write pr-str-fully
   :read-from :duratom.core/memory
   :commit-mode :duratom.core/async})

;; ------------------------------------------------------------------- codecs

(defn max-bytes
  "The `:max-bytes` of `rw`: the longest encoding the default codec writes.
  Absent: `duratom.edn/default-max-bytes` (32 MiB, less on heaps under 2 GiB).
  Anything but a positive integer is an IllegalArgumentException."
  ^long [rw]
  (let [m (:max-bytes rw)]
    (cond (nil? m) (dedn/default-max-bytes)
          (and (integer? m) (pos? m) (<= m Long/MAX_VALUE)) (long m)
          :else (throw (IllegalArgumentException.
                        (str "duratom: :max-bytes must be a positive integer (bytes), got " (pr-str m)))))))

(defn- default-codec
  "The EDN codec; `where` ({:backend :resource}) is named by its refusals."
  [rw where]
  {:encode (dedn/encoder (assoc (select-keys where [:backend :resource]) :max-bytes (max-bytes rw)))
   :decode dedn/decode})

(defn- log-codec
  "Log mode (duratom.log) over the EDN codec, marked `:log? true`. Records
  get an encoder of their own: each sizes its first chunk from its last
  encoding, and a record is far smaller than the full state."
  [rw where]
  (assoc (dlog/codec (default-codec rw where) (:encode (default-codec rw where))) :log? true))

(defn- to-encoded
  "What a custom `:write` returned, as an Encoded."
  [x]
  (cond (bytes? x) (dedn/encoded-bytes x)
        (string? x) (dedn/encoded-bytes (.getBytes ^String x StandardCharsets/UTF_8))
        :else (throw (IllegalArgumentException.
                      (str "duratom: a custom :write must return a String or bytes, got "
                           (.getName (class x)))))))

(defn- default-fns? [rw default]
  (and (identical? (:read rw (:read default)) (:read default))
       (identical? (:write rw (:write default)) (:write default))))

(defn- refuse-custom-log!
  "Log mode needs the EDN encoding: `:log? true` with a custom `:read` or
  `:write` (not those of `default`) is an IllegalArgumentException."
  [rw default]
  (when (and (:log? rw) (not (default-fns? rw default)))
    (throw (IllegalArgumentException.
            "duratom: :log? true needs duratom's EDN encoding; it cannot be combined with a custom :read or :write"))))

(defn file-codec
  "Codec for a file duratom. A custom `:write` is given a temp file beside
  `path` to write; its bytes are then committed durably by the engine. A
  custom `:read` is given a temp file holding the stored bytes."
  [rw ^File path]
  (refuse-custom-log! rw default-file-rw)
  (cond
    (default-fns? rw default-file-rw)
    (let [where {:backend :local-file :resource (.getPath (.getAbsoluteFile path))}]
      (assoc (if (:log? rw) (log-codec rw where) (default-codec rw where)) :raw? false))

    :else
    (let [dir (.getAbsoluteFile (or (.getParentFile (.getAbsoluteFile path)) (File. ".")))
          with-temp (fn [f]
                      (let [tmp (File/createTempFile ".duratom-" ".rw" dir)]
                        (try (f tmp) (finally (.delete tmp)))))]
      {:encode (fn [value]
                 (with-temp (fn [^File tmp]
                              ((:write rw) tmp value)
                              (dedn/encoded-bytes (Files/readAllBytes (.toPath tmp))))))
       :decode (fn [^bytes stored]
                 (with-temp (fn [^File tmp]
                              (Files/write (.toPath tmp) stored
                                           ^"[Ljava.nio.file.OpenOption;" (make-array java.nio.file.OpenOption 0))
                              ((:read rw) tmp))))
       :raw? true})))

(defn postgres-codec
  "Codec for a PostgreSQL duratom; `:read` gets a String for a `:text` column
  and bytes for `:bytea`. `where`: the store description (its `:backend` and
  `:resource` are named by refusals)."
  ([rw] (postgres-codec rw nil))
  ([rw where]
   (if (default-fns? rw default-postgres-rw)
     (default-codec rw where)
     (let [read (:read rw (:read default-postgres-rw))
           write (:write rw (:write default-postgres-rw))
           text? (not= :bytea (:column-type rw :text))]
       {:encode (fn [value] (to-encoded (write value)))
        :decode (fn [^bytes stored]
                  (read (if text? (String. stored StandardCharsets/UTF_8) stored)))}))))

(defn sqlite-codec
  "Codec for a SQLite duratom; `:read` gets a String for a `:text` column and
  bytes for `:blob`. `where`: as for `postgres-codec`. With `:log? true` in
  `rw`: log mode (duratom.log), marked `:log? true`; a custom `:read` or
  `:write` is then refused (IllegalArgumentException)."
  ([rw] (sqlite-codec rw nil))
  ([rw where]
   (refuse-custom-log! rw default-sqlite-rw)
   (if (default-fns? rw default-sqlite-rw)
     (if (:log? rw) (log-codec rw where) (default-codec rw where))
     (let [read (:read rw (:read default-sqlite-rw))
           write (:write rw (:write default-sqlite-rw))
           text? (not (contains? #{:blob :bytea} (:column-type rw :text)))]
       {:encode (fn [value] (to-encoded (write value)))
        :decode (fn [^bytes stored]
                  (read (if text? (String. stored StandardCharsets/UTF_8) stored)))}))))

(def ^:private carmine-clj
  "carmine's marker before nippy bytes: what it stored for any value that is
  not a String, a number, a keyword, bytes or nil."
  (byte-array [0 (int \>)]))

(def ^:private carmine-bin
  "carmine's marker before a byte array stored as it is."
  (byte-array [0 (int \<)]))

(def ^:private carmine-nil
  "carmine's marker for nil."
  (byte-array [0 (int \_)]))

(defn- nippy
  "taoensso.nippy's `freeze` or `thaw` (`fn-name`), resolved when first
  needed: duratom does not depend on nippy, carmine's users have it. `where`
  names the store for the error when it is missing."
  [fn-name where]
  (or (try (requiring-resolve (symbol "taoensso.nippy" fn-name)) (catch Exception _ nil))
      (throw (ex-info (str "duratom: " (some-> (:backend where) name) " " (:resource where)
                           ": a custom :write returned a value that carmine stored with nippy, and reading one"
                           " needs nippy too; add com.taoensso/nippy to the classpath")
                      {:duratom/backend (:backend where) :duratom/resource (:resource where)}))))

(defn- concat-bytes ^bytes [^bytes a ^bytes b]
  (let [out (byte-array (+ (alength a) (alength b)))]
    (System/arraycopy a 0 out 0 (alength a))
    (System/arraycopy b 0 out (alength a) (alength b))
    out))

(defn- carmine-frame
  "What carmine stored for `x`, what a custom `:write` returned: a String as
  its UTF-8 bytes, bytes behind carmine's binary marker, nil as carmine's nil
  marker, anything else frozen by nippy behind carmine's nippy marker (where
  carmine wrote numbers and keywords as text, they are frozen too, so that
  they read back as what they were; carmine reads them as such)."
  ^bytes [x where]
  (cond
    (string? x) (let [b (.getBytes ^String x StandardCharsets/UTF_8)]
                  (when (and (pos? (alength b)) (zero? (aget b 0)))
                    ;; it would read back as one of carmine's marked values
                    (throw (ex-info (str "duratom: " (some-> (:backend where) name) " " (:resource where)
                                         ": refused to write the state: a custom :write returned a String"
                                         " starting with the character 0, which carmine (and duratom) read"
                                         " as a marker. Nothing was written.")
                                    {:duratom/op :encode :duratom/refused :marker-prefix
                                     :duratom/backend (:backend where) :duratom/resource (:resource where)})))
                  b)
    (bytes? x) (concat-bytes carmine-bin x)
    (nil? x) carmine-nil
    :else (concat-bytes carmine-clj ((nippy "freeze" where) x))))

(defn- carmine-unframe
  "The value carmine's GET gave for `stored`: nippy-thawed behind its nippy
  marker, the bytes behind its binary marker, nil for its nil marker; any
  other bytes as a String when they are UTF-8 text, else as bytes."
  [^bytes stored where]
  (let [n (alength stored)
        marker (when (and (>= n 2) (zero? (aget stored 0))) (char (aget stored 1)))]
    (case marker
      \> ((nippy "thaw" where) (java.util.Arrays/copyOfRange stored 2 n))
      \< (java.util.Arrays/copyOfRange stored 2 n)
      \_ nil
      (try (str (.decode (.newDecoder StandardCharsets/UTF_8) (java.nio.ByteBuffer/wrap stored)))
           (catch java.nio.charset.CharacterCodingException _ stored)))))

(defn redis-codec
  "Codec for a Redis duratom. With a custom `:read`/`:write`, values are
  stored as carmine (the original's Redis client) stored what `:write`
  returned, and `:read` gets what carmine's GET gave: a String as its UTF-8
  bytes; bytes, nil and any other value behind carmine's two-byte markers,
  other values frozen with nippy. So `{:read identity :write identity}`
  keeps values in carmine's nippy format, readable by carmine, as the
  original's README advised. `where`: as for `postgres-codec`."
  ([rw] (redis-codec rw nil))
  ([rw where]
   (if (default-fns? rw default-redis-rw)
     (default-codec rw where)
     (let [read (:read rw (:read default-redis-rw))
           write (:write rw (:write default-redis-rw))]
       {:encode (fn [value] (dedn/encoded-bytes (carmine-frame (write value) where)))
        :decode (fn [^bytes stored] (read (carmine-unframe stored where)))}))))

(defn s3-codec
  "Codec for an S3 duratom; `:read` gets the size and an InputStream, as the
  original library gave it. `where`: as for `postgres-codec`."
  ([rw] (s3-codec rw nil))
  ([rw where]
   (if (default-fns? rw default-s3-rw)
     (default-codec rw where)
     (let [read (:read rw (:read default-s3-rw))
           write (:write rw (:write default-s3-rw))]
       {:encode (fn [value] (to-encoded (write value)))
        :decode (fn [^bytes stored]
                  (read (alength stored) (ByteArrayInputStream. stored)))}))))
