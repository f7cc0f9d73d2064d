(ns duratom.backend.postgres-config-test
  "The translation of every PostgreSQL db-spec form into the native
  configuration rust/postgres/settings.rs reads. (The storage itself is tested against
  a real server, in Rust and in the behaviour suite.)"
  (:require [clojure.test :refer [deftest is testing]]
            [duratom.backend.postgres :as pg]))

(def ^:private secret "s3cret pw:@/never-printed")

(defn- native
  ([db-config] (native db-config "my_table" 0 :text))
  ([db-config table row-id column-type]
   (:native-config (pg/store-config db-config table row-id column-type))))

(defn- failure
  "The ex-info `f` throws, or nil."
  [f]
  (try (f) nil (catch clojure.lang.ExceptionInfo e e)))

(defn- fails-naming
  "Asserts that `db-config` is refused with a message matching `re`, data
  naming the backend, and no secret in the message."
  [re db-config & [table row-id column-type]]
  (let [e (failure #(native db-config (or table "my_table") (or row-id 0) (or column-type :text)))]
    (is (some? e) (str "should be refused: " (pr-str (if (map? db-config) (dissoc db-config :password) db-config))))
    (when e
      (is (re-find re (ex-message e)))
      (is (= :postgres-db (:duratom/backend (ex-data e))))
      (is (not (re-find #"s3cret|never-printed" (ex-message e))) (ex-message e))
      (is (not (re-find #"s3cret|never-printed" (pr-str (ex-data e))))))))

(def ^:private base
  {"backend" "postgres-db" "table" "my_table" "row-id" 0 "column-type" "text"})

(deftest a-dbtype-map
  (is (= {:backend :postgres-db
          :resource "my_table row 0"
          :native-config (merge base {"host" "db.example" "port" 6543 "dbname" "app"
                                      "user" "u" "password" secret})}
         (pg/store-config {:dbtype "postgresql" :dbname "app" :host "db.example" :port 6543
                           :user "u" :password secret}
                          "my_table" 0 :text)))
  (testing "clojure.java.jdbc's defaults and spellings"
    (is (= (merge base {"host" "127.0.0.1" "dbname" "app" "user" "u"})
           (native {:dbtype "postgres" :dbname "app" :username "u"})))
    (is (= 5432 (get (native {:dbtype "postgresql" :dbname "app" :user "u" :port "5432"}) "port"))))
  (testing "TLS settings"
    (is (= "require" (get (native {:dbtype "postgresql" :dbname "a" :user "u" :ssl true}) "sslmode")))
    (is (= "verify-full" (get (native {:dbtype "postgresql" :dbname "a" :user "u" :ssl true :sslmode "verify-full"}) "sslmode")))
    (is (= {"sslmode" "verify-ca" "sslrootcert" "/etc/ca.pem"}
           (select-keys (native {:dbtype "postgresql" :dbname "a" :user "u" :sslmode :verify-ca :sslrootcert "/etc/ca.pem"})
                        ["sslmode" "sslrootcert"])))
    (is (not (contains? (native {:dbtype "postgresql" :dbname "a" :user "u" :ssl false}) "sslmode"))))
  (testing "connect timeout in seconds, as pgjdbc takes it"
    (is (= 7000 (get (native {:dbtype "postgresql" :dbname "a" :user "u" :connectTimeout 7}) "connect-timeout-ms"))))
  (testing "the bound on every operation, in milliseconds: absent unless given (the native default, 30000, applies)"
    (is (not (contains? (native {:dbtype "postgresql" :dbname "a" :user "u"}) "timeout-ms")))
    (is (= 2500 (get (native {:dbtype "postgresql" :dbname "a" :user "u" :timeout-ms 2500}) "timeout-ms")))
    (is (= 4000 (get (native "postgresql://u@h/app?timeout-ms=4000") "timeout-ms")))
    (doseq [bad [0 -5 "soon" 1.5]]
      (is (thrown-with-msg? clojure.lang.ExceptionInfo #":timeout-ms must be a positive whole number of milliseconds"
                            (native {:dbtype "postgresql" :dbname "a" :user "u" :timeout-ms bad}))
          (pr-str bad)))))

(deftest the-legacy-subprotocol-map
  (is (= (merge base {"host" "h" "port" 5433 "dbname" "app" "user" "u" "password" secret})
         (native {:subprotocol "postgresql" :subname "//h:5433/app" :user "u" :password secret
                  :classname "org.postgresql.Driver"})))
  (testing "parameters inside :subname"
    (is (= "verify-full" (get (native {:subprotocol "postgresql" :subname "//h/app?sslmode=verify-full" :user "u"})
                              "sslmode")))))

(deftest a-connection-uri-map
  (is (= (merge base {"host" "h" "port" 5433 "dbname" "app" "user" "u" "password" "p@ss:w/rd" "sslmode" "require"})
         (native {:connection-uri "jdbc:postgresql://h:5433/app?user=u&password=p%40ss%3Aw%2Frd&sslmode=require"})))
  (testing ":user and :password beside the URI"
    (is (= {"user" "v" "password" secret}
           (select-keys (native {:connection-uri "jdbc:postgresql://h/app" :user "v" :password secret})
                        ["user" "password"])))))

(deftest uri-strings
  (is (= (merge base {"host" "h" "port" 5433 "dbname" "app" "user" "u" "password" "p:w@rd" "sslmode" "require"})
         (native "postgresql://u:p%3Aw%40rd@h:5433/app?sslmode=require")))
  (testing "postgres:// and no password"
    (is (= (merge base {"host" "h" "dbname" "app" "user" "u"})
           (native "postgres://u@h/app"))))
  (testing "jdbc: prefix with pgjdbc's parameters"
    (is (= (merge base {"host" "h" "dbname" "app" "user" "u" "password" "x+y" "sslmode" "require"
                        "connect-timeout-ms" 3000 "application-name" "svc"})
           (native "jdbc:postgresql://h/app?user=u&password=x+y&ssl=true&connectTimeout=3&ApplicationName=svc"))))
  (testing "jdbc:postgresql:db means the local server"
    (is (= (merge base {"host" "localhost" "dbname" "app" "user" "u"})
           (native "jdbc:postgresql:app?user=u"))))
  (testing "IPv6 host, UTF-8 password, libpq parameter names"
    (is (= (merge base {"host" "::1" "port" 5433 "dbname" "app" "user" "u" "password" "pé"
                        "connect-timeout-ms" 2000 "application-name" "svc"})
           (native "postgresql://u:p%C3%A9@[::1]:5433/app?connect_timeout=2&application_name=svc"))))
  (testing "without a user, the JVM's user name, as libpq uses the OS user"
    (is (= (System/getProperty "user.name") (get (native "postgresql://h/app") "user")))))

(deftest table-row-and-column-type
  (is (= {:backend :postgres-db
          :resource "s.tbl row 3"
          :native-config (merge base {"table" "s.tbl" "row-id" 3 "column-type" "bytea"
                                      "host" "h" "dbname" "app" "user" "u"})}
         (pg/store-config "postgresql://u@h/app" "s.tbl" 3 :bytea)))
  (is (= {"table" "tbl" "column-type" "bytea"}
         (select-keys (native "postgresql://u@h/app" :tbl 0 "bytea") ["table" "column-type"])))
  (is (= "text" (get (native "postgresql://u@h/app" "t" 0 nil) "column-type")))
  (fails-naming #":row-id" "postgresql://u@h/app" "t" "1")
  (fails-naming #":column-type" "postgresql://u@h/app" "t" 0 :json)
  (fails-naming #":table-name" "postgresql://u@h/app" "  ")
  (is (some? (failure #(pg/store-config "postgresql://u@h/app" nil 0 :text)))))

(deftest unusable-db-specs-name-what-is-wrong-and-never-the-password
  (fails-naming #"db-config must be a db-spec map or a URI string, got nil" nil)
  (fails-naming #"java.lang.Long" 42)
  (fails-naming #":dbtype .* \"mysql\"" {:dbtype "mysql" :dbname "a" :password secret})
  (fails-naming #":subname" {:subprotocol "postgresql" :user "u" :password secret})
  (fails-naming #":subprotocol" {:subprotocol "mysql" :subname "//h/a" :password secret})
  (fails-naming #":port" {:dbtype "postgresql" :dbname "a" :port "five" :password secret})
  (fails-naming #":host" {:dbtype "postgresql" :dbname "a" :host 7 :password secret})
  (fails-naming #":datasource" {:datasource (Object.) :password secret})
  (fails-naming #":dbtype \"postgresql\", :subprotocol/:subname, or :connection-uri" {:password secret :host "h"})
  (fails-naming #":connection-uri" {:connection-uri 7 :password secret})
  (fails-naming #"must start with postgresql://" (str "mysql://u:" secret "@h/db"))
  (fails-naming #"cannot be parsed" (str "postgresql://u:" secret "@h/db"))
  (fails-naming #"several hosts" "postgresql://u:s3cret@h1:5432,h2:5432/db")
  (fails-naming #"cannot be parsed: Malformed escape" "postgresql://u:s3cret%zz@h/db")
  (fails-naming #"password in the db-config URI has a malformed %-escape" "jdbc:postgresql:db?user=u&password=s3cret%zz")
  (fails-naming #"\"ssl\" must be true or false" "jdbc:postgresql://h/db?password=s3cret&ssl=maybe")
  (fails-naming #"\"connectTimeout\" must be a whole number of seconds" "jdbc:postgresql://h/db?password=s3cret&connectTimeout=soon"))
