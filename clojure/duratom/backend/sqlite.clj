(ns duratom.backend.sqlite
  "Turns the sqlite-db constructor's arguments (a clojure.java.jdbc SQLite
  db-spec, table name, row id, column type) into a store description for
  `duratom.storage/open`. The storage itself is rust/sqlite/, whose `Settings`
  (settings.rs) reads the native configuration keys made here (any other is an
  error there):

    path, table, row-id, column-type, busy-timeout-ms

  The db-spec forms clojure.java.jdbc accepted for SQLite are understood:
  `{:dbtype \"sqlite\" :dbname path}`, the legacy
  `{:classname \"org.sqlite.JDBC\" :subprotocol \"sqlite\" :subname path}`,
  `{:connection-uri \"jdbc:sqlite:path\"}` and the string `\"jdbc:sqlite:path\"`."
  (:require [duratom.backend.args :as args]
            [clojure.java.io :as io]
            [clojure.string :as str]))

(set! *warn-on-reflection* true)

(defn- fail
  "See duratom.backend.args/fail."
  ([message] (args/fail :sqlite-db message))
  ([message data] (args/fail :sqlite-db message data)))

(def ^:private type-name args/type-name)

(defn- uri-path
  "The file path of a `jdbc:sqlite:` URI's rest: `path`, `file:path` or
  `file:///path`, without `?query` parameters (sqlite-jdbc's pragmas)."
  [^String rest]
  (let [no-query (first (str/split rest #"\?" 2))]
    (cond
      (str/starts-with? no-query "file://") (subs no-query (count "file://"))
      (str/starts-with? no-query "file:") (subs no-query (count "file:"))
      :else no-query)))

(defn- uri->path [^String uri]
  (let [prefix "jdbc:sqlite:"]
    (if (str/starts-with? (str/lower-case uri) prefix)
      (uri-path (subs uri (count prefix)))
      (fail (str "a db-spec string must be a \"jdbc:sqlite:path\" URI, got " (pr-str uri)) {:key :db-config}))))

(defn- spec->path
  "The database file named by `db-config`, as given (relative or absolute)."
  [db-config]
  (cond
    (string? db-config) (uri->path db-config)

    (map? db-config)
    (cond
      (:connection-uri db-config) (uri->path (str (:connection-uri db-config)))

      (:dbtype db-config)
      (let [t (str/lower-case (name (:dbtype db-config)))]
        (when-not (contains? #{"sqlite" "sqlite3"} t)
          (fail (str ":dbtype must be \"sqlite\", got " (pr-str (:dbtype db-config))) {:key :dbtype}))
        (or (:dbname db-config) (fail "a :dbtype \"sqlite\" db-spec needs :dbname (the database file)" {:key :dbname})))

      (:subprotocol db-config)
      (let [p (str/lower-case (name (:subprotocol db-config)))]
        (when-not (= "sqlite" p)
          (fail (str ":subprotocol must be \"sqlite\", got " (pr-str (:subprotocol db-config))) {:key :subprotocol}))
        (uri-path (str (or (:subname db-config)
                           (fail "a :subprotocol \"sqlite\" db-spec needs :subname (the database file)" {:key :subname})))))

      :else (fail "the db-spec map needs :dbtype \"sqlite\" and :dbname, :subprotocol \"sqlite\" and :subname, or :connection-uri"
                  {:key :db-config}))

    :else (fail (str ":db-config must be a db-spec map or a \"jdbc:sqlite:path\" String, got " (type-name db-config))
                {:key :db-config})))

(defn store-config
  "Store description for row `row-id` of `table-name` in the SQLite database
  `db-config` names:
  `{:backend :sqlite-db, :resource \"<path> table <t> row <id>\", :native-config {String value}}`.

  `db-config`: `{:dbtype \"sqlite\" :dbname path}`,
  `{:classname \"org.sqlite.JDBC\" :subprotocol \"sqlite\" :subname path}`,
  `{:connection-uri \"jdbc:sqlite:path\"}` or `\"jdbc:sqlite:path\"` (a
  `file:` prefix and `?params` are allowed and ignored). A relative path is
  taken from the JVM's working directory; the directory must exist, the file
  is created when missing. In-memory databases are refused: nothing would be
  durable. The map may carry `:busy-timeout-ms` (default 5000): how long a
  call waits for another connection's write lock.

  `table-name`: a String (or keyword), used as one identifier. `row-id`: an
  integer. `column-type`: `:text` or `:blob` (`:bytea` is taken as `:blob`),
  used when creating the table.

  Throws ex-info naming the key or form that is wrong, with data
  `{:duratom/backend :sqlite-db}`."
  [db-config table-name row-id column-type]
  (let [path (str (spec->path db-config))
        _ (when (or (str/blank? path) (= ":memory:" path) (str/starts-with? path ":memory:")
                    (str/includes? path "mode=memory"))
            (fail (str "the database must be a file; got " (pr-str path)
                       " (an in-memory database would not be durable)") {:key :db-config}))
        file (.getAbsoluteFile (io/file path))
        table (args/table-name :sqlite-db table-name)
        row-id (args/row-id :sqlite-db row-id)
        column-type (case (some-> column-type name)
                      (nil "text") "text"
                      ("blob" "bytea") "blob"
                      (fail (str ":column-type must be :text or :blob, got " (pr-str column-type))
                            {:key :column-type}))
        busy (when (map? db-config) (:busy-timeout-ms db-config))]
    (when (and (some? busy) (not (and (integer? busy) (<= 0 busy 3600000))))
      (fail (str ":busy-timeout-ms must be an integer from 0 to 3600000, got " (pr-str busy)) {:key :busy-timeout-ms}))
    {:backend :sqlite-db
     :resource (str file " table " table " row " row-id)
     :native-config (cond-> {"backend" "sqlite-db"
                             "path" (str file)
                             "table" table
                             "row-id" row-id
                             "column-type" column-type}
                      busy (assoc "busy-timeout-ms" (long busy)))}))
