(ns duratom.postgres-test
  "The PostgreSQL backend against a real server (scripts/test starts one)."
  (:require [clojure.edn :as edn]
            [clojure.string :as str]
            [clojure.test :refer [deftest is testing]]
            [duratom.behaviour :as behaviour]
            [duratom.core :as d]
            [duratom.duragent :as duragent]
            [duratom.readers :as readers]
            [duratom.shared :as shared]
            [duratom.test-support :as ts]
            [taoensso.nippy :as nippy]))

(def ^:private script "scripts/postgres-server")

(defn- env [k] (ts/required-env k script))

(defn db-spec
  "The test server as a clojure.java.jdbc :dbtype map."
  []
  {:dbtype "postgresql" :host (env "DURATOM_TEST_PG_HOST") :port (Long/parseLong (env "DURATOM_TEST_PG_PORT"))
   :dbname (env "DURATOM_TEST_PG_DB") :user (env "DURATOM_TEST_PG_USER") :password (env "DURATOM_TEST_PG_PASSWORD")})

(defn psql
  "Runs `sql` with psql, an independent client; returns its unaligned output."
  [sql]
  (ts/sh! "env" (str "PGPASSWORD=" (env "DURATOM_TEST_PG_PASSWORD"))
          "psql" "-X" "-q" "-A" "-t" "-v" "ON_ERROR_STOP=1"
          "-h" (env "DURATOM_TEST_PG_HOST") "-p" (env "DURATOM_TEST_PG_PORT")
          "-U" (env "DURATOM_TEST_PG_USER") "-d" (env "DURATOM_TEST_PG_DB") "-c" sql))

(defn- server! [action]
  (ts/sh! script action (env "DURATOM_TEST_PG_DIR")))

(def backend
  {:name "postgres-db"
   :new-location (fn [] {:table (str/replace (ts/unique-name "t") "-" "_") :row 0})
   :open (fn [{:keys [table row]} init rw] (d/postgres-atom (db-spec) table row nil init rw))
   :open-agent (fn [{:keys [table row]} init rw]
                 (d/duragent :postgres-db :db-config (db-spec) :table-name table :row-id row :init init :rw rw))
   :kw-args (fn [{:keys [table row]}] [:postgres-db :db-config (db-spec) :table-name table :row-id row])
   :default-rw d/default-postgres-rw
   :child-open-code (fn [{:keys [table row]}]
                      (str "(duratom.core/postgres-atom " (pr-str (db-spec)) " " (pr-str table) " " row
                           " nil nil {:shared? true})"))})

(deftest postgres-behaviour
  (behaviour/run-all backend))

(deftest postgres-shared-mode
  (shared/run-all backend))

(deftest postgres-server-stopped-and-started-again
  ;; Stopping the real server breaks every commit; starting it again (same
  ;; data, same port) must heal the duratom without reopening it.
  (behaviour/error-handler-and-recommit backend
                                        (fn [_] (server! "stop"))
                                        (fn [_] (server! "start"))))

(deftest postgres-duragent
  (duragent/run-all backend (fn [_] (server! "stop")) (fn [_] (server! "start"))))

(deftest keyword-constructor-and-db-spec-forms
  (let [{:keys [host port dbname user password]} (db-spec)
        table (str/replace (ts/unique-name "forms") "-" "_")
        ;; Names the sessions of the two sslmode=require forms, so that the
        ;; server's view of exactly those sessions can be asked for.
        app (str/replace (ts/unique-name "tls") "-" "_")
        specs [(db-spec)
               {:subprotocol "postgresql" :subname (str "//" host ":" port "/" dbname) :user user :password password}
               {:connection-uri (str "jdbc:postgresql://" host ":" port "/" dbname "?user=" user "&password=" password)}
               (str "postgresql://" user ":" password "@" host ":" port "/" dbname)
               (str "postgresql://" user ":" password "@" host ":" port "/" dbname "?sslmode=require&application_name=" app)
               (str "jdbc:postgresql://" host ":" port "/" dbname "?user=" user "&password=" password "&sslmode=require&ApplicationName=" app)]]
    (doseq [[i spec] (map-indexed vector specs)]
      (let [dura (d/duratom :postgres-db :db-config spec :table-name table :row-id i :init {:form i}
                            :rw (assoc d/default-postgres-rw :commit-mode :sync))]
        (swap! dura assoc :ok true)
        (is (= {:form i :ok true} (d/backend-snapshot dura)) (str "db-spec form " i))))
    (is (= (set (range (count specs)))
           (set (map #(Long/parseLong %) (str/split-lines (psql (str "SELECT id FROM " table))))))
        "one row per row-id in one table")
    (testing "duratom's own sessions use TLS with sslmode=require, as the server sees them"
      (is (= ["t" "t"]
             (str/split-lines
              (psql (str "SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)"
                         " WHERE a.application_name = '" app "'"))))))))

(deftest compatible-with-tables-of-the-original-library
  (let [table (str/replace (ts/unique-name "original") "-" "_")]
    ;; exactly what the original created: no primary key, plain EDN text
    (psql (str "CREATE TABLE " table " (id integer, value text)"))
    (psql (str "INSERT INTO " table " VALUES (3, '{:users #sorted/map {\"b\" 2, \"a\" 1}, :q #queue [1 2]}')"))
    (let [dura (d/postgres-atom (db-spec) table 3 nil nil (assoc d/default-postgres-rw :commit-mode :sync))]
      (is (= (sorted-map "a" 1 "b" 2) (:users @dura)))
      (is (sorted? (:users @dura)))
      (swap! dura assoc :n 1)
      (let [stored (psql (str "SELECT value FROM " table " WHERE id = 3"))]
        (is (= @dura (edn/read-string readers/default stored)) "what we write reads back with clojure.edn"))
      (is (= "1" (str/trim (psql (str "SELECT count(*) FROM " table " WHERE id = 3")))) "still one row")
      (d/destroy dura)
      (is (= "0" (str/trim (psql (str "SELECT count(*) FROM " table)))) "destroy deletes the row"))))

(deftest hostile-table-names-never-run-as-sql
  (psql "CREATE TABLE IF NOT EXISTS canary (id integer, value text)")
  (psql "DELETE FROM canary")
  (psql "INSERT INTO canary VALUES (1, 'alive')")
  (doseq [hostile ["t; DROP TABLE canary; --" "x\"; DROP TABLE canary; --" "canary\" WHERE 1=1; --" "it's"]]
    (let [outcome (try (let [dura (d/postgres-atom (db-spec) hostile 0 nil {:v 1}
                                                   (assoc d/default-postgres-rw :commit-mode :sync))]
                         (swap! dura update :v inc)
                         (is (= {:v 2} (d/backend-snapshot dura)))
                         (d/destroy dura)
                         :used-literally)
                       (catch clojure.lang.ExceptionInfo e
                         (is (str/includes? (ex-message e) "table") "a rejection names the table")
                         :rejected))]
      ;; Each is a legal PostgreSQL name (under 64 bytes), so it must be used
      ;; as one literal table name, never refused and never run.
      (is (= :used-literally outcome) (pr-str hostile))
      (is (= "1" (str/trim (psql (str "SELECT count(*) FROM pg_class WHERE relname = $h$" hostile "$h$"))))
          (str "a table named exactly " (pr-str hostile)))
      (is (= "alive" (str/trim (psql "SELECT value FROM canary WHERE id = 1")))
          (str "the canary table survived " (pr-str hostile))))))

(deftest bad-input-is-a-clear-error-without-the-password
  (let [spec (db-spec)
        password (:password spec)
        attempt (fn [spec]
                  (let [t0 (System/nanoTime)
                        e (try (d/postgres-atom spec "never_created" 0 nil 1 nil) nil
                               (catch Exception e e))]
                    [e (/ (- (System/nanoTime) t0) 1e9)]))]
    (testing "nothing listens on the port"
      (let [port (with-open [s (java.net.ServerSocket. 0)] (.getLocalPort s))
            [e secs] (attempt (assoc spec :port port))]
        (is (some? e))
        (is (re-find #"(?i)connect" (ex-message e)))
        (is (< secs 10) "bounded connect timeout")
        (is (= :postgres-db (:duratom/backend (ex-data e))))))
    (testing "wrong password"
      (let [[e _] (attempt (assoc spec :password "wrong-password-123"))]
        (is (some? e))
        (is (re-find #"(?i)password" (ex-message e)))
        (is (not (str/includes? (ex-message e) "wrong-password-123")))
        (is (not (str/includes? (pr-str (ex-data e)) "wrong-password-123")))))
    (testing "missing database"
      (let [[e _] (attempt (assoc spec :dbname "no_such_db"))]
        (is (some? e))
        (is (str/includes? (ex-message e) "no_such_db"))
        (is (not (str/includes? (ex-message e) password)))))
    (testing "a db-spec we cannot use names the key"
      (let [[e _] (attempt {:dbtype "mysql" :host "h" :dbname "d"})]
        (is (some? e))
        (is (re-find #"dbtype|subprotocol|postgres" (ex-message e)))))))

(deftest big-values-and-binary-rw
  (testing "a value of more than 20 MB round-trips"
    (let [v (ts/big-value 21)
          {:keys [table]} ((:new-location backend))
          dura (d/postgres-atom (db-spec) table 0 nil v (assoc d/default-postgres-rw :commit-mode :sync))]
      (is (< (* 20 1024 1024) (count (pr-str v))))
      (is (= v @(d/postgres-atom (db-spec) table 0 nil nil nil)))
      (d/destroy dura)))
  (testing "nippy in a bytea column"
    (let [{:keys [table]} ((:new-location backend))
          rw {:read nippy/thaw :write nippy/freeze :column-type :bytea :commit-mode :sync}
          v (ts/sample-value)
          dura (d/postgres-atom (db-spec) table 0 nil v rw)]
      (is (= "bytea" (str/trim (psql (str "SELECT data_type FROM information_schema.columns WHERE table_name = '"
                                          table "' AND column_name = 'value'")))))
      (is (= v @(d/postgres-atom (db-spec) table 0 nil nil rw)))
      (d/destroy dura))))

(deftest table-names-longer-than-postgresql-keeps-are-refused
  ;; PostgreSQL cuts identifiers to 63 bytes: two longer names sharing those
  ;; would silently share one row.
  (let [base (str/replace (ts/unique-name "long") "-" "_")
        at-limit (str base (apply str (repeat (- 63 (count base)) "x")))
        too-long (str at-limit "y")
        rw (assoc d/default-postgres-rw :commit-mode :sync)]
    (is (= 63 (count (.getBytes ^String at-limit "UTF-8"))))
    (let [e (try (d/postgres-atom (db-spec) too-long 0 nil {:v 1} rw) nil (catch Exception e e))]
      (is (some? e) "a 64-byte name is refused")
      (is (str/includes? (str (ex-message e)) too-long) "the error names the table")
      (is (str/includes? (str (ex-message e)) "63 bytes"))
      (is (= :postgres-db (:duratom/backend (ex-data e)))))
    (is (= "" (str/trim (psql (str "SELECT relname FROM pg_class WHERE relname LIKE '" base "%'"))))
        "nothing was created")
    (let [dura (d/postgres-atom (db-spec) at-limit 0 nil {:v 1} rw)]
      (swap! dura update :v inc)
      (is (= {:v 2} (d/backend-snapshot dura)) "a 63-byte name works")
      (is (= at-limit (str/trim (psql (str "SELECT relname FROM pg_class WHERE relname = '" at-limit "'")))))
      (d/destroy dura))))

(defn- server-pids
  "The test server's postmaster and all its children (as strings)."
  []
  (let [postmaster (str/trim (first (str/split-lines (slurp (str (env "DURATOM_TEST_PG_DIR") "/data/postmaster.pid")))))
        p (.start (ProcessBuilder. ^java.util.List ["ps" "-o" "pid=" "--ppid" postmaster]))
        children (str/split (str/trim (slurp (.getInputStream p))) #"\s+")]
    (.waitFor p)
    (into [postmaster] (remove str/blank? children))))

(defn- signal-server! [sig]
  (apply ts/sh! "kill" (str "-" sig) (server-pids)))

(defn- messages
  "The messages of `e` and its causes, joined."
  [^Throwable e]
  (str/join " | " (map #(.getMessage ^Throwable %) (take-while some? (iterate #(.getCause ^Throwable %) e)))))

(defn- sessions-of [app]
  (Long/parseLong (str/trim (psql (str "SELECT count(*) FROM pg_stat_activity WHERE application_name = '" app "'")))))

(defn- timed
  "Runs `f`; returns [its exception or nil, seconds taken]."
  [f]
  (let [t0 (System/nanoTime)
        e (try (f) nil (catch Throwable e e))]
    [e (/ (- (System/nanoTime) t0) 1e9)]))

(deftest waits-on-the-server-are-bounded
  (let [app (str/replace (ts/unique-name "bounded") "-" "_")
        spec (assoc (db-spec) :timeout-ms 3000 :ApplicationName app)
        rw (assoc d/default-postgres-rw :commit-mode :sync)]
    (testing "the server stopped (SIGSTOP) during a synchronous swap!: fails within the bound, recovers after SIGCONT"
      (let [table (str/replace (ts/unique-name "stopped") "-" "_")
            a (d/postgres-atom spec table 0 nil {:n 0} rw)]
        (swap! a update :n inc)
        (signal-server! "STOP")
        (let [[e secs] (try (timed #(swap! a update :n inc))
                            (finally (signal-server! "CONT")))]
          (println (format "PostgreSQL stopped: swap! failed after %.2f s (timeout-ms 3000)" secs))
          (is (some? e))
          (is (<= 2.9 secs 5.0) (str "took " secs " s"))
          (is (re-find #"did not answer within 3000 ms" (messages e)) (messages e))
          (is (re-find #"outcome unknown" (messages e)) "the UPDATE had been sent"))
        ;; The continued server runs the UPDATE it had read, then sees the
        ;; closed connection and ends that session: wait for it.
        (let [deadline (+ (System/nanoTime) 20e9)]
          (while (and (pos? (sessions-of app)) (< (System/nanoTime) deadline))
            (Thread/yield)))
        (is (zero? (sessions-of app)) "the stopped session ended")
        (let [v (swap! a update :n inc)]
          (is (= v @a (d/backend-snapshot a)) "memory equals storage after the next swap!"))
        (d/destroy a)))
    (testing "the write of unknown outcome landed once the server continued: the next swap! adopts it (watches fire) and builds on it"
      (let [table (str/replace (ts/unique-name "landed") "-" "_")
            a (d/postgres-atom spec table 0 nil {:n 0} rw)
            seen (atom [])]
        (add-watch a :w (fn [_ _ o n] (swap! seen conj [o n])))
        (swap! a update :n inc)
        (signal-server! "STOP")
        (let [e (try (swap! a update :n inc) nil
                     (catch Throwable e e)
                     (finally (signal-server! "CONT")))]
          (is (true? (:duratom/outcome-unknown? (ex-data e))) (messages e))
          (is (= {:n 1} @a) "the swap! threw: memory holds the last known durable state"))
        (let [deadline (+ (System/nanoTime) 20e9)]
          (while (and (pos? (sessions-of app)) (< (System/nanoTime) deadline))
            (Thread/yield)))
        (is (= {:n 2} (d/backend-snapshot a)) "the continued server applied the UPDATE it had read")
        (is (= {:n 3} (swap! a update :n inc)) "the next swap! builds on the landed state")
        (is (= {:n 3} @a (d/backend-snapshot a)))
        (is (= [[{:n 0} {:n 1}] [{:n 1} {:n 2}] [{:n 2} {:n 3}]] @seen) "the watches saw the landed state adopted")
        (d/destroy a)))
    (testing "asynchronous: the landed write's version is recorded, refresh! keeps the newest state"
      (let [table (str/replace (ts/unique-name "landed_async") "-" "_")
            a (d/postgres-atom spec table 0 nil {:n 0} d/default-postgres-rw)
            seen (atom [])
            stored #(str/trim (psql (str "SELECT value FROM \"" table "\" WHERE id = 0")))]
        (add-watch a :w (fn [_ _ o n] (swap! seen conj [o n])))
        (swap! a update :n inc)
        (is (true? (d/flush! a 10000)))
        (signal-server! "STOP")
        (try
          (swap! a update :n inc)
          (is (thrown? Exception (d/flush! a 20000)) "the write of {:n 2} failed (outcome unknown)")
          (swap! a update :n inc)
          (finally (signal-server! "CONT")))
        ;; the continued server applies the UPDATE it had read
        (let [deadline (+ (System/nanoTime) 20e9)]
          (while (and (= "{:n 1}" (stored)) (< (System/nanoTime) deadline))
            (Thread/yield)))
        (is (not= "{:n 1}" (stored)))
        (is (= {:n 3} (d/refresh! a)) "refresh! keeps the newest state, which was computed from the landed one")
        (is (true? (d/flush! a 20000)))
        (is (= {:n 3} @a (d/backend-snapshot a)))
        (is (= [[{:n 0} {:n 1}] [{:n 1} {:n 2}] [{:n 2} {:n 3}]] @seen) "memory never went back")
        (d/destroy a)))
    (testing "refresh! after the write of unknown outcome landed: memory takes it"
      (let [table (str/replace (ts/unique-name "landed_refresh") "-" "_")
            a (d/postgres-atom spec table 0 nil {:n 0} rw)]
        (swap! a update :n inc)
        (signal-server! "STOP")
        (try (swap! a update :n inc) (catch Throwable _ nil) (finally (signal-server! "CONT")))
        (let [deadline (+ (System/nanoTime) 20e9)]
          (while (and (pos? (sessions-of app)) (< (System/nanoTime) deadline))
            (Thread/yield)))
        (is (= {:n 2} (d/refresh! a) @a (d/backend-snapshot a)))
        (is (= {:n 3} (swap! a update :n inc) (d/backend-snapshot a)))
        (d/destroy a)))
    (testing "a row lock held by another session: fails within the bound, works once it is released"
      (let [table (str/replace (ts/unique-name "locked") "-" "_")
            a (d/postgres-atom spec table 0 nil {:n 0} rw)
            holder (-> (ProcessBuilder. ^java.util.List
                                        ["psql" "-X" "-q" "-A" "-t" "-h" (env "DURATOM_TEST_PG_HOST")
                                         "-p" (env "DURATOM_TEST_PG_PORT") "-U" (env "DURATOM_TEST_PG_USER")
                                         "-d" (env "DURATOM_TEST_PG_DB")])
                       (doto (-> .environment (.put "PGPASSWORD" (env "DURATOM_TEST_PG_PASSWORD"))))
                       (.redirectErrorStream true)
                       (.start))
            to-psql (java.io.PrintWriter. (.getOutputStream holder) true)
            from-psql (java.io.BufferedReader. (java.io.InputStreamReader. (.getInputStream holder)))]
        (try
          (.println to-psql (str "BEGIN; SELECT 'locked' FROM \"" table "\" WHERE id = 0 FOR UPDATE;"))
          (is (= "locked" (.readLine from-psql)) "the other session holds the row lock")
          (let [[e secs] (timed #(swap! a update :n inc))]
            (println (format "PostgreSQL row lock held: swap! failed after %.2f s (timeout-ms 3000)" secs))
            (is (some? e))
            (is (< secs 4.0) (str "took " secs " s"))
            (is (re-find #"another session holds a lock on the row" (messages e)) (messages e)))
          (is (= {:n 0} @a (d/backend-snapshot a)) "nothing changed")
          (.println to-psql "ROLLBACK;")
          (.println to-psql "\\q")
          (is (.waitFor holder 30 java.util.concurrent.TimeUnit/SECONDS))
          (is (= {:n 1} (swap! a update :n inc) (d/backend-snapshot a)) "works once the lock is released")
          (finally (.destroyForcibly holder)))
        (d/destroy a)))))
