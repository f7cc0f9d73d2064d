(ns duratom.storage
  "The Clojure side of the one boundary into the Rust storage engine
  (`duratom.Native`). Nothing else calls `duratom.Native`.

  A store is opened from a backend description
  `{:backend kw, :resource str, :native-config {str value}, :refresh (fn [] desc)}`
  as the `duratom.backend.*` namespaces build it. Every failure comes out as
  `ex-info` whose message names backend and resource and whose data holds
  `:duratom/backend`, `:duratom/resource` and `:duratom/op`."
  (:require [clojure.string :as str]
            [duratom.edn :as dedn])
  (:import (duratom Native Native$StorageException Native$ConflictException
                    Native$OutcomeUnknownException)
           (duratom.edn Encoded)
           (java.nio.charset StandardCharsets)))

(set! *warn-on-reflection* true)

(defn- edn-text
  "`v` as EDN text for the native configuration: strings, whole numbers,
  booleans, keywords and vectors of them. Only `\\` and `\"` are escaped in
  strings; every other character is written as it is, which EDN allows and
  which the Rust reader (edn-rs, whose escapes are few) reads back exactly."
  [k v]
  (cond
    (string? v) (str \" (-> ^String v (.replace "\\" "\\\\") (.replace "\"" "\\\"")) \")
    (or (instance? Long v) (instance? Integer v) (boolean? v)) (str v)
    (keyword? v) (str v)
    (vector? v) (str "[" (str/join " " (map #(edn-text k %) v)) "]")
    :else (throw (IllegalArgumentException.
                  (str "duratom: configuration `" (name k) "` has a value of type "
                       (if (nil? v) "nil" (.getName (class v))) ", which the native side does not read")))))

(defn- wire
  "The native config as the UTF-8 text of one EDN map with keyword keys, the
  backend as a keyword: `{:backend :local-file :path \"...\" :raw false}`
  (read by rust/config.rs)."
  ^bytes [native-config]
  (let [entries (for [[k v] (sort-by (comp name key) native-config)]
                  (str (keyword (name k)) " "
                       (if (= "backend" (name k)) (keyword (name v)) (edn-text k v))))]
    (.getBytes (str "{" (str/join ", " entries) "}") StandardCharsets/UTF_8)))

(defn- failure
  "Wraps a native or JVM exception as the ex-info callers see."
  [store op ^Throwable e]
  (ex-info (or (.getMessage e) (str e))
           {:duratom/backend (:backend store)
            :duratom/resource (:resource store)
            :duratom/op op
            :duratom/conflict? (instance? Native$ConflictException e)
            :duratom/outcome-unknown? (instance? Native$OutcomeUnknownException e)}
           e))

(defmacro ^:private across-boundary
  "Runs `body` (a native call), translating its exceptions for `store`."
  [store op & body]
  `(try ~@body
        (catch Native$StorageException e# (throw (failure ~store ~op e#)))
        (catch IllegalArgumentException e# (throw (failure ~store ~op e#)))
        (catch IllegalStateException e# (throw (failure ~store ~op e#)))))

(defrecord Store [backend resource refresh handle-state])

(defn- open-handle ^long [desc]
  ;; A library that did not load throws its reason here, at every open.
  (Native/ensureLoaded)
  (across-boundary desc :open (Native/open (wire (:native-config desc)))))

(defn open
  "Opens the store a backend description names; returns a `Store`. Throws
  ex-info (data `:duratom/backend`) when the configuration is unusable or the
  resource cannot be reached."
  [desc]
  (map->Store {:backend (:backend desc)
               :resource (:resource desc)
               :refresh (:refresh desc)
               :handle-state (atom {:handle (open-handle desc)
                                    :native-config (:native-config desc)})}))

(defn- handle
  "The store's handle; where the backend refreshes its configuration (rotating
  credentials), reopens first when the configuration changed."
  ^long [store]
  (let [state (:handle-state store)]
    (when-let [refresh (:refresh store)]
      (let [desc (refresh)]
        (when (not= (:native-config desc) (:native-config @state))
          (locking state
            (let [old (:handle @state)]
              (reset! state {:handle (open-handle desc) :native-config (:native-config desc)})
              (Native/close old))))))
    (:handle @state)))

(defn writes-can-land-late?
  "Whether a write to `store` can take effect after its call returned: a
  request left on a network, and a server that was stalled applies it when
  it goes on. Commits to such stores are always conditional on the version
  last seen, so such a write can never replace a later one. A local file or
  SQLite database has nothing in flight once the call returns."
  [store]
  (contains? #{:postgres-db :aws-s3 :redis-db} (:backend store)))

(defn load-stored
  "What the store holds now: `{:bytes b, :version v}`, or nil when nothing is stored."
  [store]
  (across-boundary store :load
    (when-let [pair (Native/load (handle store))]
      {:bytes (aget pair 0)
       :version (String. ^bytes (aget pair 1) StandardCharsets/UTF_8)})))

(defn- replace!
  "Native commit of `encoded` (see commit!)."
  [store ^Encoded encoded expected last-seen]
  (let [utf8 (fn [^String v] (.getBytes v StandardCharsets/UTF_8))
        expected-bytes (cond (nil? expected) nil
                             (= :nothing expected) Native/EXPECT_NOTHING
                             :else (utf8 expected))]
    (across-boundary store :commit
      (String. (Native/commit (handle store) (:chunks encoded) (long (:size encoded)) expected-bytes
                              (some-> last-seen utf8))
               StandardCharsets/UTF_8))))

(defn- append!
  "Native append of the change record `encoded` to the state stored as `after`."
  [store ^Encoded encoded ^String after]
  (across-boundary store :commit
    (String. (Native/append (handle store) (:chunks encoded) (long (:size encoded))
                            (.getBytes after StandardCharsets/UTF_8))
             StandardCharsets/UTF_8)))

(defn- conflict? [e]
  (and (instance? clojure.lang.ExceptionInfo e) (:duratom/conflict? (ex-data e))))

(defn commit!
  "Durably stores `encoded` (a duratom.edn.Encoded, or a byte array); returns
  the new version string. `expected`: nil to write unconditionally, `:nothing`
  to write only if nothing is stored, or a version string to write only if
  that version is still stored. When the condition fails, returns nil and
  writes nothing. `last-seen`, for an unconditional write: the version the
  caller last saw (nil: none); the file store numbers the new state after
  it, since the caller, not the store, keeps the record of the version.

  Log mode (duratom.log): an `encoded` carrying `:log/after` is a change
  record from the state stored as that version. It is appended when that is
  the version the commit is made after (`expected`, else `last-seen`);
  otherwise, or when the append is refused (another version stored, or a
  stored base that takes no records: plain EDN, an old header), the full
  state (`:log/full`, a delay) is written instead, under the same condition. `:log/landed`
  is called with the new version once the write is durable."
  ([store encoded expected] (commit! store encoded expected nil))
  ([store encoded expected last-seen]
   (let [^Encoded encoded (if (bytes? encoded) (dedn/encoded-bytes encoded) encoded)
         after (:log/after encoded)
         full (fn [] (let [f (force (:log/full encoded))]
                       [(replace! store f expected last-seen) (:log/landed f)]))
         [version landed] (try
                            (cond
                              (nil? after) [(replace! store encoded expected last-seen) (:log/landed encoded)]
                              (= after (if (nil? expected) last-seen expected))
                              (try [(append! store encoded after) (:log/landed encoded)]
                                   (catch Exception e
                                     (if (conflict? e) (full) (throw e))))
                              :else (full))
                            (catch Exception e
                              (if (conflict? e) nil (throw e))))]
     (when (and version landed) (landed version))
     version)))

(defn delete!
  "Removes what the store holds. Removing nothing is not an error."
  [store]
  (across-boundary store :delete (Native/delete (handle store))))

(defn close!
  "Releases the store's native resources. Harmless twice."
  [store]
  (Native/close (:handle @(:handle-state store))))
