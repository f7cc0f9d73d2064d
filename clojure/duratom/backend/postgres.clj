(ns duratom.backend.postgres
  "Turns the postgres-db constructor's arguments (a clojure.java.jdbc db-spec,
  table name, row id, column type) into a store description for
  `duratom.storage/open`. The storage itself is rust/postgres/, whose settings.rs
  reads the native configuration keys made here (any other is an error there):

    host, port, dbname, user, password, sslmode, sslrootcert,
    connect-timeout-ms, timeout-ms, application-name, table, row-id, column-type

  Every db-spec form clojure.java.jdbc accepted for PostgreSQL is understood:
  a `:dbtype` map, the legacy `:subprotocol`/`:subname` map, a
  `:connection-uri` map, and URI strings with or without the `jdbc:` prefix."
  (:require [duratom.backend.args :as args]
            [clojure.string :as str])
  (:import (java.io ByteArrayOutputStream)
           (java.net URI URISyntaxException)
           (java.nio.charset StandardCharsets)))

(set! *warn-on-reflection* true)

(defn- fail
  "See duratom.backend.args/fail."
  ([message] (args/fail :postgres-db message))
  ([message data] (args/fail :postgres-db message data)))

(def ^:private type-name args/type-name)

(defn- percent-decode
  "Decodes %XX escapes as UTF-8. `+` stays `+`: in the user-info part of a
  URI it is a literal character, and a password may contain it."
  [^String s what]
  (when s
    (let [out (ByteArrayOutputStream.)
          n (count s)]
      (loop [i 0]
        (when (< i n)
          (let [c (.charAt s i)]
            (if (= c \%)
              (let [hex (when (<= (+ i 3) n) (subs s (inc i) (+ i 3)))
                    b (when (and hex (re-matches #"[0-9A-Fa-f]{2}" hex)) (Integer/parseInt hex 16))]
                (when-not b
                  (fail (str "the " what " in the db-config URI has a malformed %-escape")))
                (.write out (int b))
                (recur (+ i 3)))
              (let [bytes (.getBytes (str c) StandardCharsets/UTF_8)]
                (.write out bytes 0 (alength bytes))
                (recur (inc i)))))))
      (String. (.toByteArray out) StandardCharsets/UTF_8))))

(defn- query-params
  "The `?a=b&c=d` part of a URI as a map of decoded strings."
  [^String raw-query]
  (if (str/blank? raw-query)
    {}
    (into {}
          (for [pair (str/split raw-query #"&")
                :when (not (str/blank? pair))
                :let [[k v] (str/split pair #"=" 2)
                      k (percent-decode k "parameter name")]]
            [k (percent-decode (or v "") (str "parameter " k))]))))

(defn- seconds->ms
  "A connect timeout given in seconds (pgjdbc's connectTimeout, libpq's
  connect_timeout), as the native key's milliseconds. 0 means none there; here
  it keeps our bounded default."
  [v key]
  (let [s (str/trim (str v))]
    (when-not (re-matches #"\d{1,9}" s)
      (fail (str key " must be a whole number of seconds, got " (pr-str s)) {:key key}))
    (let [secs (Long/parseLong s)]
      (when (pos? secs) (* 1000 secs)))))

(defn- connection-properties
  "Native keys for the connection properties pgjdbc and libpq take as URI
  parameters or db-spec keys, under either spelling. Unknown ones are left
  alone: pgjdbc has dozens (prepareThreshold, ...) that do not apply here."
  [props]
  (let [get-any (fn [& ks] (some #(let [v (get props %)] (when (some? v) [% v])) ks))
        [ssl-key ssl] (get-any "ssl" :ssl)
        [_ sslmode] (get-any "sslmode" :sslmode)
        [_ rootcert] (get-any "sslrootcert" :sslrootcert)
        [timeout-key timeout] (get-any "connectTimeout" "connect_timeout" :connectTimeout :connect-timeout)
        [_ app] (get-any "ApplicationName" "application_name" :ApplicationName :application-name)
        ;; duratom's own: the bound on every operation (default 30000).
        [op-timeout-key op-timeout] (get-any "timeout-ms" :timeout-ms)
        op-timeout (when (some? op-timeout)
                     (let [s (str/trim (str op-timeout))]
                       (when-not (re-matches #"[1-9]\d{0,9}" s)
                         (fail (str (pr-str op-timeout-key) " must be a positive whole number of milliseconds, got "
                                    (pr-str s))
                               {:key op-timeout-key}))
                       (Long/parseLong s)))
        ssl? (case (str/lower-case (str ssl))
               ("" "false" "0") false
               ("true" "1") true
               (fail (str (pr-str ssl-key) " must be true or false, got " (pr-str ssl)) {:key ssl-key}))]
    (cond-> {}
      ;; `ssl` alone asks for encryption (libpq's `require`); an explicit
      ;; sslmode says more and wins.
      ssl? (assoc "sslmode" "require")
      sslmode (assoc "sslmode" (str/lower-case (name sslmode)))
      rootcert (assoc "sslrootcert" (str rootcert))
      (and timeout (seconds->ms timeout (pr-str timeout-key))) (assoc "connect-timeout-ms" (seconds->ms timeout (pr-str timeout-key)))
      app (assoc "application-name" (str app))
      op-timeout (assoc "timeout-ms" op-timeout))))

(defn- parse-uri
  "Connection keys from a URI: `postgresql://user:pw@host:port/db?k=v`,
  `postgres://...`, `jdbc:postgresql://host:port/db?user=..&password=..`,
  or `jdbc:postgresql:db`. `what` names the form for error messages."
  [^String uri what]
  (let [[_ scheme rest] (re-matches #"(?i)(?:jdbc:)?(postgresql|postgres):(.*)" uri)]
    (when-not scheme
      (fail (str what " must start with postgresql://, postgres:// or jdbc:postgresql:")))
    (if-not (str/starts-with? rest "//")
      ;; jdbc:postgresql:db[?params]: the local server on the default port.
      (let [[db query] (str/split rest #"\?" 2)
            params (query-params query)]
        (merge {"host" "localhost"}
               (when-not (str/blank? db) {"dbname" (percent-decode db "database name")})
               (select-keys params ["user" "password"])
               (connection-properties params)))
      (let [^URI parsed (try (URI. (str "postgresql:" rest))
                        (catch URISyntaxException e
                          ;; getReason, not getMessage: the message quotes the
                          ;; whole URI, password included.
                          (fail (str what " cannot be parsed: " (.getReason e) " at index "
                                     (+ (.getIndex e) (- (count uri) (count rest)) -2)))))
            authority (or (.getRawAuthority parsed) "")
            _ (when (str/includes? authority ",")
                (fail (str what " names several hosts; duratom connects to one")))
            _ (when (and (not (str/blank? authority)) (nil? (.getHost parsed)))
                (fail (str what " has a host part that is not host or host:port")))
            [user password] (when-let [info (.getRawUserInfo parsed)]
                              (let [[u p] (str/split info #":" 2)]
                                [(percent-decode u "user name") (percent-decode p "password")]))
            params (query-params (.getRawQuery parsed))
            host (some-> (.getHost parsed) (str/replace #"^\[(.*)\]$" "$1"))
            path (.getRawPath parsed)
            db (when-not (str/blank? path) (percent-decode (subs path 1) "database name"))]
        (when (and path (str/includes? (subs path (min 1 (count path))) "/"))
          (fail (str what " has a path that is not /database")))
        (merge {"host" (or host "localhost")}
               (when (pos? (.getPort parsed)) {"port" (str (.getPort parsed))})
               (when-not (str/blank? db) {"dbname" db})
               (when-not (str/blank? user) {"user" user})
               (when (some? password) {"password" password})
               ;; Parameters may also carry them (pgjdbc's usual form; libpq's
               ;; host= for a socket directory); the authority part wins.
               (into {} (for [[k v] (select-keys params ["host" "port" "dbname" "user" "password"])
                              :when (not (and (#{"host" "port"} k) (some? host)))]
                          [k v]))
               (connection-properties params))))))

(def ^:private postgres-dbtypes
  "The :dbtype / :subprotocol names clojure.java.jdbc maps to PostgreSQL."
  #{"postgresql" "postgres" "pgsql"})

(defn- port-string [port]
  (let [s (str/trim (str port))]
    (when-not (re-matches #"\d{1,5}" s)
      (fail (str ":port in db-config must be a port number, got " (pr-str port)) {:key :port}))
    s))

(defn- map-spec
  "Connection keys from a db-spec map."
  [spec]
  (let [{:keys [dbtype subprotocol subname connection-uri dbname host port user username password]} spec
        credentials (cond-> {}
                      (or user username) (assoc "user" (str (or user username)))
                      (some? password) (assoc "password" (str password)))]
    (cond
      (or (contains? spec :datasource) (contains? spec :connection) (contains? spec :factory) (contains? spec :name))
      (fail (str "db-config with " (pr-str (first (filter #(contains? spec %) [:datasource :connection :factory :name])))
                 " cannot be used: the native storage engine makes its own connection; give "
                 ":dbtype/:host/:port/:dbname/:user/:password, :connection-uri, or a URI string")
            {:key (first (filter #(contains? spec %) [:datasource :connection :factory :name]))})

      (some? connection-uri)
      (do (when-not (string? connection-uri)
            (fail (str ":connection-uri in db-config must be a String, got " (type-name connection-uri))
                  {:key :connection-uri}))
          ;; clojure.java.jdbc passes :user/:password alongside as properties.
          (merge (parse-uri connection-uri ":connection-uri in db-config") credentials))

      (some? subprotocol)
      (do (when-not (postgres-dbtypes (str/lower-case (name subprotocol)))
            (fail (str ":subprotocol in db-config must be \"postgresql\", got " (pr-str subprotocol))
                  {:key :subprotocol}))
          (when-not (and (string? subname) (not (str/blank? subname)))
            (fail (str ":subname in db-config must be a String like \"//host:port/db\", got " (type-name subname))
                  {:key :subname}))
          (merge (parse-uri (str "postgresql:" subname) ":subname in db-config")
                 credentials
                 (connection-properties spec)))

      (some? dbtype)
      (do (when-not (postgres-dbtypes (str/lower-case (name dbtype)))
            (fail (str ":dbtype in db-config must be \"postgresql\" for a :postgres-db duratom, got " (pr-str dbtype))
                  {:key :dbtype}))
          (when (and (some? dbname) (or (not (or (string? dbname) (keyword? dbname))) (str/blank? (name dbname))))
            (fail (str ":dbname in db-config must be a non-empty String, got " (type-name dbname)) {:key :dbname}))
          (when (and (some? host) (or (not (string? host)) (str/blank? host)))
            (fail (str ":host in db-config must be a non-empty String, got " (type-name host)) {:key :host}))
          (merge {"host" (or host "127.0.0.1")} ; clojure.java.jdbc's default
                 (when (some? port) {"port" (port-string port)})
                 (when (some? dbname) {"dbname" (name dbname)})
                 credentials
                 (connection-properties spec)))

      :else
      (fail (str "db-config map needs :dbtype \"postgresql\", :subprotocol/:subname, or :connection-uri; it has "
                 (pr-str (vec (sort-by str (remove #{:password} (keys spec))))))))))

(defn- db-spec-config
  "Connection keys for any db-spec form."
  [db-config]
  (cond
    (string? db-config) (parse-uri db-config "the db-config URI string")
    (map? db-config) (map-spec db-config)
    :else (fail (str "db-config must be a db-spec map or a URI string, got " (type-name db-config)))))

(defn store-config
  "Store description for row `row-id` of `table-name`:
  `{:backend :postgres-db, :resource \"<table> row <id>\", :native-config {String value}}`
  (the settings rust/postgres/settings.rs reads).

  `db-config` is a clojure.java.jdbc db-spec for PostgreSQL:
  - `{:dbtype \"postgresql\" :dbname .. :host .. :port .. :user .. :password ..}`
    (also `:username`; `:host` defaults to 127.0.0.1, `:port` to 5432;
    `:sslmode` \"disable\"/\"prefer\"/\"require\"/\"verify-ca\"/\"verify-full\",
    `:ssl true` meaning \"require\", `:sslrootcert` a PEM file path,
    `:connectTimeout` in seconds (default 5), `:ApplicationName`, and
    duratom's own `:timeout-ms`, the bound on every operation, default
    30000; a URI takes them as parameters);
  - `{:subprotocol \"postgresql\" :subname \"//host:port/db\" :user .. :password ..}`;
  - `{:connection-uri \"jdbc:postgresql://host:port/db?user=..&password=..\"}`;
  - a URI string `\"postgresql://user:pw@host:port/db?sslmode=require\"`
    (also `postgres://`) or `\"jdbc:postgresql://...\"`, user and password
    percent-decoded.
  Without a user, the JVM's `user.name` is used, as libpq uses the OS user.

  `table-name`: a String (or keyword), optionally `schema.table`, read as
  PostgreSQL reads an unquoted name (see rust/postgres/table_name.rs). `row-id`: an
  integer. `column-type`: `:text` or `:bytea` (keyword or String).

  Throws ex-info naming the key or form that is wrong, never the password,
  with data `{:duratom/backend :postgres-db}`."
  [db-config table-name row-id column-type]
  (let [table (args/table-name :postgres-db table-name)
        row-id (args/row-id :postgres-db row-id)
        column-type (case (some-> column-type name)
                      (nil "text") "text"
                      "bytea" "bytea"
                      (fail (str ":column-type must be :text or :bytea, got " (pr-str column-type))
                            {:key :column-type}))
        conn (db-spec-config db-config)
        conn (cond-> conn
               (str/blank? (get conn "user")) (assoc "user" (System/getProperty "user.name"))
               ;; Ports arrive as text from URIs and parameters: a number on the wire.
               (contains? conn "port") (update "port" #(Long/parseLong (port-string %))))]
    {:backend :postgres-db
     :resource (str table " row " row-id)
     :native-config (merge conn
                           {"backend" "postgres-db"
                            "table" table
                            "row-id" row-id
                            "column-type" column-type})}))
