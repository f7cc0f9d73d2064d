(ns duratom.backend.redis
  "Turns the redis-db constructor's arguments (a carmine connection spec and a
  key name) into a store description for `duratom.storage/open`. The storage
  itself is rust/redis/, which reads the native configuration keys made here:

    url, endpoint, key, timeout-ms, tls-ca-cert-file

  Understood: carmine's `{:pool {..} :spec {:host :port :username :password
  :db :uri :timeout-ms :ssl-fn}}` (the `:pool` is not used: one kept
  connection per duratom), the `:spec` map alone, and a URI string
  `redis://user:pass@host:port/db` or `rediss://...` (TLS). carmine's
  `:ssl-fn :default` means TLS as well; our own `:tls-ca-cert-file` names the
  CA to trust instead of the compiled-in Mozilla roots."
  (:require [duratom.backend.args :as args]
            [clojure.string :as str])
  (:import (java.net URI URISyntaxException)
           (java.nio.charset StandardCharsets)))

(set! *warn-on-reflection* true)

(defn- fail
  "See duratom.backend.args/fail."
  ([message] (args/fail :redis-db message))
  ([message data] (args/fail :redis-db message data)))

(def ^:private type-name args/type-name)

(defn- percent-encode
  "Every byte but unreserved URI characters as %XX, for user and password."
  [^String s]
  (apply str (map (fn [b]
                    (let [c (char (bit-and b 0xff))]
                      (if (or (Character/isLetterOrDigit c) (#{\- \. \_ \~} c))
                        (if (< (int c) 128) (str c) (format "%%%02X" (bit-and b 0xff)))
                        (format "%%%02X" (bit-and b 0xff)))))
                  (.getBytes s StandardCharsets/UTF_8))))

(defn- parse-uri
  "{:tls? :host :port :db} of a redis:// or rediss:// URI (its user info
  stays in the URI, which is passed on as it is)."
  [^String s]
  (let [^URI uri (try (URI. s) (catch URISyntaxException _ (fail "the :uri (or URI string) is not a valid URI" {:key :uri})))
        scheme (some-> (.getScheme uri) str/lower-case)]
    (when-not (#{"redis" "rediss"} scheme)
      (fail (str "a Redis URI must start with redis:// or rediss://, got scheme " (pr-str scheme)) {:key :uri}))
    (when (.getRawFragment uri)
      (fail "the Redis URI has a #fragment, which is not read (no #insecure: TLS always checks the certificate)" {:key :uri}))
    (when (str/blank? (.getHost uri))
      (fail "the Redis URI has no host" {:key :uri}))
    (let [path (str/replace (or (.getPath uri) "") #"^/" "")]
      (when-not (or (str/blank? path) (re-matches #"\d{1,5}" path))
        (fail "the Redis URI's path must be a database number (/0, /1, ...)" {:key :uri}))
      {:tls? (= "rediss" scheme)
       :host (.getHost uri)
       :port (if (neg? (.getPort uri)) 6379 (.getPort uri))
       :db (if (str/blank? path) 0 (Long/parseLong path))})))

(defn- conn-spec
  "The connection part of `db-config`: a spec map, from any accepted form."
  [db-config]
  (cond
    (nil? db-config) {}
    (string? db-config) {:uri db-config}
    (and (map? db-config) (contains? db-config :spec))
    (let [spec (:spec db-config)]
      (if (or (nil? spec) (map? spec))
        (or spec {})
        (fail (str ":spec must be a map, got " (type-name spec)) {:key :spec})))
    (map? db-config) db-config
    :else (fail (str ":db-config must be a carmine connection map or a redis:// URI String, got "
                     (type-name db-config))
                {:key :db-config})))

(defn store-config
  "Store description for the Redis key `key-name`:
  `{:backend :redis-db, :resource \"<host:port/db> key <k>\", :native-config {..}}`.

  `db-config`: carmine's `{:pool {} :spec {...}}`, the spec map alone, a
  `redis://[user[:password]@]host[:port][/db]` String (`rediss://` for TLS)
  or nil (127.0.0.1:6379, as carmine). Spec keys: `:host` (127.0.0.1),
  `:port` (6379), `:username`, `:password`, `:db` (0), `:uri` (wins over the
  others, as in carmine), `:timeout-ms` (5000: connect, read and write
  timeout of each call), `:ssl-fn` (carmine's: `:default` turns TLS on; a
  function cannot be used, the connection is made in native code), and
  `:tls-ca-cert-file` (ours: a PEM file whose certificates are the only
  trusted roots; without it Mozilla's roots, compiled in). TLS always checks
  the server's certificate chain and that it names the host.

  Throws ex-info naming what is wrong, never the password, with data
  `{:duratom/backend :redis-db}`."
  [db-config key-name]
  (let [spec (conn-spec db-config)
        ssl-fn (:ssl-fn spec)
        _ (when-not (or (nil? ssl-fn) (= :default ssl-fn))
            (fail (str ":ssl-fn must be :default (TLS with the compiled-in roots, or :tls-ca-cert-file's); got a "
                       (type-name ssl-fn) ": a function cannot be used, the connection is made in native code")
                  {:key :ssl-fn}))
        ca-file (:tls-ca-cert-file spec)
        _ (when-not (or (nil? ca-file) (and (string? ca-file) (not (str/blank? ca-file))))
            (fail (str ":tls-ca-cert-file must be a file path String, got " (type-name ca-file)) {:key :tls-ca-cert-file}))
        k (cond
            (keyword? key-name) (subs (str key-name) 1)
            (and (string? key-name) (not (str/blank? key-name))) key-name
            :else (fail (str ":key-name must be a non-empty String, got "
                             (if (string? key-name) "a blank String" (type-name key-name)))
                        {:key :key-name}))
        timeout (:timeout-ms spec 5000)
        _ (when-not (and (integer? timeout) (<= 1 timeout 3600000))
            (fail (str ":timeout-ms must be an integer from 1 to 3600000, got " (pr-str timeout)) {:key :timeout-ms}))
        [url {:keys [host port db]}]
        (if-let [uri (:uri spec)]
          (if (string? uri)
            (let [parsed (parse-uri uri)]
              ;; carmine applies :ssl-fn to a :uri connection too.
              [(if (and ssl-fn (not (:tls? parsed))) (str/replace-first uri #"(?i)^redis:" "rediss:") uri)
               (cond-> parsed ssl-fn (assoc :tls? true))])
            (fail (str ":uri must be a String, got " (type-name uri)) {:key :uri}))
          (let [host (str (or (:host spec) "127.0.0.1"))
                port (let [p (:port spec 6379)
                           p (if (string? p) (try (Long/parseLong p) (catch NumberFormatException _ -1)) p)]
                       (if (and (integer? p) (< 0 p 65536))
                         p
                         (fail (str ":port must be an integer from 1 to 65535, got " (pr-str (:port spec))) {:key :port})))
                db (let [d (:db spec 0)]
                     (if (and (integer? d) (<= 0 d 99999)) d (fail (str ":db must be a database number, got " (pr-str d)) {:key :db})))
                user (some-> (:username spec) str)
                pass (some-> (:password spec) str)
                auth (cond
                       (and user pass) (str (percent-encode user) ":" (percent-encode pass) "@")
                       pass (str ":" (percent-encode pass) "@")
                       user (str (percent-encode user) "@")
                       :else "")
                host-part (if (str/includes? host ":") (str "[" host "]") host)]
            [(str (if ssl-fn "rediss" "redis") "://" auth host-part ":" port "/" db)
             {:host host :port port :db db :tls? (some? ssl-fn)}]))
        tls? (str/starts-with? (str/lower-case url) "rediss:")
        _ (when (and ca-file (not tls?))
            (fail ":tls-ca-cert-file is given, but the connection is not TLS (use a rediss:// URI or :ssl-fn :default)"
                  {:key :tls-ca-cert-file}))
        endpoint (str (if tls? "rediss://" "") host ":" port "/" db)]
    {:backend :redis-db
     :resource (str endpoint " key " k)
     :native-config (cond-> {"backend" "redis-db"
                             "url" url
                             "endpoint" endpoint
                             "key" k
                             "timeout-ms" (long timeout)}
                      ca-file (assoc "tls-ca-cert-file" ca-file))}))
