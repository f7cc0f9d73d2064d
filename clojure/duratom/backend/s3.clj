(ns duratom.backend.s3
  "Turns the aws-s3 constructor's arguments (amazonica-style credentials,
  bucket, key and the `:rw` option `:metadata`) into a store description for
  `duratom.storage/open`. The storage itself is rust/s3/, whose module doc
  lists the native configuration keys made here."
  (:require [clojure.string :as str]
            [duratom.backend.args :as args]))

(set! *warn-on-reflection* true)

(def ^:private default-region
  "S3's own default region, as amazonica and the AWS SDKs use it."
  "us-east-1")

(defn- fail
  "See duratom.backend.args/fail: messages name keys and never print a
  credentials map, so a secret key cannot leak into a log."
  [message data]
  (args/fail :aws-s3 message data))

(defn- non-blank-string [what x]
  (if (and (string? x) (not (str/blank? x)))
    x
    (fail (str what " must be a non-empty String, got " (if (nil? x) "nil" (.getName (class x)))) {})))

(def ^:private region-name
  ;; eu-west-1, us-gov-west-1, ap-southeast-2 ... and amazonica's enum
  ;; spelling EU_WEST_1, which is the same name once lower-cased.
  #"(?i)[a-z]{2}(?:[-_][a-z]+)+[-_]\d+")

(defn- endpoint-config
  "The `region`/`endpoint` native keys for amazonica's `:endpoint`: a region
  name, a URL, or a bare host name (taken as https)."
  [endpoint region]
  (let [endpoint (when (some? endpoint) (non-blank-string ":endpoint in :credentials" endpoint))
        region (when (some? region) (non-blank-string ":region in :credentials" region))]
    (cond
      (nil? endpoint)
      {"region" (or region (System/getenv "AWS_REGION") (System/getenv "AWS_DEFAULT_REGION") default-region)}

      (re-matches region-name endpoint)
      {"region" (str/replace (str/lower-case endpoint) "_" "-")}

      (re-find #"^(?i)https?://" endpoint)
      {"endpoint" endpoint "region" (or region default-region)}

      (re-find #"^[A-Za-z0-9.-]+(:\d+)?$" endpoint)
      {"endpoint" (str "https://" endpoint) "region" (or region default-region)}

      :else
      (fail (str ":endpoint in :credentials must be a region name (e.g. \"eu-west-1\") or a URL "
                 "(e.g. \"http://127.0.0.1:9000\"), got " (pr-str endpoint))
            {:endpoint endpoint}))))

(defn- credentials-config
  "The native keys for one credentials map (nil = the AWS default chain)."
  [creds]
  (when-not (or (nil? creds) (map? creds))
    (fail (str ":credentials must be a map, a no-arg fn returning one, or nil, got " (.getName (class creds))) {}))
  (let [{:keys [access-key secret-key session-token endpoint region profile timeout-ms]} creds]
    (when (and (some? access-key) (nil? secret-key))
      (fail ":credentials give :access-key but no :secret-key" {}))
    (when (and (some? secret-key) (nil? access-key))
      (fail ":credentials give :secret-key but no :access-key" {}))
    (cond-> (endpoint-config endpoint region)
      access-key (assoc "access-key" (non-blank-string ":access-key in :credentials" access-key)
                        "secret-key" (non-blank-string ":secret-key in :credentials" secret-key))
      session-token (assoc "session-token" (non-blank-string ":session-token in :credentials" session-token))
      profile (assoc "profile" (non-blank-string ":profile in :credentials" profile))
      (some? timeout-ms) (assoc "timeout-ms"
                                (if (and (integer? timeout-ms) (pos? timeout-ms) (<= timeout-ms Integer/MAX_VALUE))
                                  (long timeout-ms)
                                  (fail (str ":timeout-ms in :credentials must be a positive whole number of"
                                             " milliseconds, got " (pr-str timeout-ms))
                                        {:timeout-ms timeout-ms}))))))

(defn- resolve-credentials
  "Calls a credentials fn (rotation: the caller calls `store-config` again
  for fresh ones); passes a map or nil through."
  [credentials]
  (if (fn? credentials)
    (let [creds (try (credentials)
                     (catch Exception e
                       (throw (ex-info (str "duratom :aws-s3: the :credentials fn failed: " (.getMessage e))
                                       {:duratom/backend :aws-s3} e))))]
      (when-not (map? creds)
        (fail (str "the :credentials fn must return a credentials map, it returned "
                   (if (nil? creds) "nil" (.getName (class creds))))
              {}))
      creds)
    credentials))

(defn- header-token?
  "Whether `s` can be the name part of an `x-amz-meta-<name>` header."
  [^String s]
  (boolean (re-matches #"[A-Za-z0-9!#$%&'*+\-.^_`|~]+" s)))

(defn- user-metadata-config
  "User metadata as the `user-metadata` native key: sorted `[name value]`
  pairs (see rust/s3/settings.rs). Names and values that S3 cannot carry in a
  header are refused here with the name in the message."
  [user-metadata]
  (when-not (map? user-metadata)
    (fail (str ":user-metadata in :metadata must be a map, got " (.getName (class user-metadata))) {}))
  (->> user-metadata
       (map (fn [[k v]]
              (let [n (if (keyword? k) (name k) (str k))
                    v (str v)]
                (when-not (header-token? n)
                  (fail (str "user metadata name " (pr-str n)
                             " must be letters, digits or -_.!#$%&'*+^`|~ (it becomes an HTTP header name)")
                        {:metadata-name n}))
                (when-not (re-matches #"[\x20-\x7e\t]*" v)
                  (fail (str "user metadata " (pr-str n) " must have a printable US-ASCII value")
                        {:metadata-name n}))
                [n v])))
       sort
       vec))

(def ^:private metadata-keys
  "The `:metadata` keys understood, as amazonica's ObjectMetadata spells them,
  and the native key each becomes."
  {:server-side-encryption "sse"
   :sse-kms-key-id "sse-kms-key-id"
   :content-type "content-type"})

(defn- metadata-config
  "The native keys for the `:rw` option `:metadata`."
  [metadata]
  (when-not (or (nil? metadata) (map? metadata))
    (fail (str ":metadata must be a map, got " (.getName (class metadata))) {}))
  (reduce-kv
   (fn [m k v]
     (cond
       (contains? metadata-keys k)
       (assoc m (metadata-keys k) (non-blank-string (str k " in :metadata") (if (keyword? v) (name v) v)))

       (= k :user-metadata)
       (let [pairs (user-metadata-config v)]
         (if (empty? pairs) m (assoc m "user-metadata" pairs)))

       ;; The original library passed the byte count itself; ours is computed
       ;; from the bytes on every write.
       (= k :content-length)
       m

       :else
       (fail (str "unknown :metadata key " (pr-str k) "; known: "
                  (str/join ", " (map pr-str (concat (keys metadata-keys) [:user-metadata]))))
             {:metadata-key k})))
   {}
   (or metadata {})))

(defn store-config
  "Store description for object `key` of `bucket`:
  `{:backend :aws-s3, :resource \"bucket/key\", :native-config {String value}}`
  (the settings rust/s3/settings.rs reads).

  `credentials`: an amazonica-style map (`:access-key`, `:secret-key`,
  optional `:session-token`, `:endpoint` as a region name like \"eu-west-1\"
  or a URL like \"http://127.0.0.1:9000\"; also `:profile` for a named AWS
  profile and `:region` to go with an endpoint URL), a no-arg fn returning
  such a map (called now; call `store-config` again for rotated
  credentials), or nil for the AWS default chain (environment, profile,
  instance role). Without an `:endpoint` or `:region`, the region is
  `AWS_REGION`, else `AWS_DEFAULT_REGION`, else us-east-1.
  `metadata`: the `:rw` option `:metadata`, e.g. `{:server-side-encryption
  \"AES256\" :user-metadata {\"team\" \"a\"}}` (also `:content-type` and
  `:sse-kms-key-id`).

  Throws ex-info naming what is wrong (never the secret key), data
  `{:duratom/backend :aws-s3}`."
  [credentials bucket key metadata]
  (let [bucket (non-blank-string ":bucket" bucket)
        key (non-blank-string ":key" key)
        creds (resolve-credentials credentials)]
    {:backend :aws-s3
     :resource (str bucket "/" key)
     :native-config (merge {"backend" "aws-s3" "bucket" bucket "key" key}
                           (credentials-config creds)
                           (metadata-config metadata))}))
