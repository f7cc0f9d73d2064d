(ns duratom.sqlite-test
  "The SQLite backend on real database files. Another process's view (a lock
  held, the table as the original library wrote it, an integrity check) comes
  from python3's sqlite3 module, a client independent of ours."
  (:require [clojure.java.io :as io]
            [clojure.string :as str]
            [clojure.test :refer [deftest is testing]]
            [duratom.behaviour :as behaviour]
            [duratom.core :as d]
            [duratom.duragent :as duragent]
            [duratom.readers :as readers]
            [duratom.shared :as shared]
            [duratom.storage :as storage]
            [duratom.test-support :as ts]
            [taoensso.nippy :as nippy])
  (:import (java.io BufferedReader File InputStreamReader)
           (java.util.concurrent TimeUnit)))

(defn- spec [path] {:dbtype "sqlite" :dbname (str path)})

(def backend
  {:name "sqlite-db"
   :new-location (fn [] {:path (str (io/file (ts/temp-dir) "state.db")) :table "duratom_state" :row 0})
   :open (fn [{:keys [path table row]} init rw] (d/sqlite-atom (spec path) table row nil init rw))
   :open-agent (fn [{:keys [path table row]} init rw]
                 (d/duragent :sqlite-db :db-config (spec path) :table-name table :row-id row :init init :rw rw))
   :kw-args (fn [{:keys [path table row]}] [:sqlite-db :db-config (spec path) :table-name table :row-id row])
   :default-rw d/default-sqlite-rw
   :child-open-code (fn [{:keys [path table row]}]
                      (str "(duratom.core/sqlite-atom " (pr-str (spec path)) " " (pr-str table) " " row
                           " nil nil {:shared? true})"))})

(defn- python
  "Runs python3 `code` (with `args` as sys.argv[1:]) to the end; returns its stdout."
  [code & args]
  (apply ts/sh! "python3" "-c" code (map str args)))

(defn- python-query
  "The rows of `sql` on the database `path`, read by python3's sqlite3, as EDN-ish strings."
  [path sql]
  (str/trim (python "import sqlite3,sys\nc=sqlite3.connect(sys.argv[1])\nfor r in c.execute(sys.argv[2]): print('|'.join(map(str,r)))"
                    path sql)))

;; Breaking a SQLite store: its directory moved away (the open connection
;; notices the file is gone from its path), and moved back.
(defn- away [{:keys [path]}] (File. (str (.getParentFile (io/file path)) ".away")))
(defn- break! [loc] (is (.renameTo (.getParentFile (io/file (:path loc))) (away loc))))
(defn- mend! [loc] (is (.renameTo (away loc) (.getParentFile (io/file (:path loc))))))

(deftest sqlite-behaviour
  (behaviour/run-all backend))

(def ^:private log-backend
  "The backend in log mode: change records beside the row, for every
  duratom the suites open."
  (assoc backend
         :default-rw (assoc d/default-sqlite-rw :log? true)
         :open (fn [loc init rw] ((:open backend) loc init (assoc rw :log? true)))
         :child-open-code (fn [{:keys [path table row]}]
                            (str "(duratom.core/sqlite-atom " (pr-str (spec path)) " " (pr-str table) " " row
                                 " nil nil {:shared? true :log? true})"))))

(deftest sqlite-behaviour-in-log-mode
  (behaviour/run-all log-backend))

(deftest sqlite-shared-mode
  (shared/run-all backend))

(deftest sqlite-failures-and-recovery
  (behaviour/error-handler-and-recommit backend break! mend!))

(deftest sqlite-duragent
  (duragent/run-all backend break! mend!))

(deftest sqlite-shared-mode-failures-and-duragent-in-log-mode
  (shared/run-all log-backend)
  (behaviour/error-handler-and-recommit log-backend break! mend!)
  (duragent/run-all log-backend break! mend!))

(deftest every-db-spec-form-and-arity
  (let [dir (ts/temp-dir)
        path (str (io/file dir "forms.db"))]
    (let [a (d/duratom :sqlite-db :db-config (spec path) :table-name "forms" :init {:x 1}
                       :rw (assoc d/default-sqlite-rw :commit-mode :sync))]
      (swap! a update :x inc)
      (doseq [form [{:classname "org.sqlite.JDBC" :subprotocol "sqlite" :subname path}
                    (str "jdbc:sqlite:" path)
                    (str "jdbc:sqlite:file:" path "?journal_mode=WAL")
                    {:connection-uri (str "jdbc:sqlite:" path)}
                    {:dbtype "sqlite" :dbname path :busy-timeout-ms 1000}]]
        (is (= {:x 2} @(d/sqlite-atom form "forms")) (pr-str form)))
      (is (= {:x 2} @(d/sqlite-atom (spec path) "forms" 0)))
      (is (= :other @(d/sqlite-atom (spec path) "forms" 7 nil :other)))
      (is (= :other @(d/sqlite-atom (spec path) "forms" 7 nil :ignored d/default-sqlite-rw)))
      (is (= "2" (python-query path "SELECT count(*) FROM forms")) "two rows, ids 0 and 7")
      (d/destroy a)
      (is (= "7" (python-query path "SELECT id FROM forms")) "destroy removed row 0 only"))
    (testing "a relative path is taken from the working directory"
      (let [rel (str "target/" (ts/unique-name "rel") ".db")
            a (d/sqlite-atom (str "jdbc:sqlite:" rel) "t" 0 nil 5 {:commit-mode :sync})]
        (is (.exists (io/file (System/getProperty "user.dir") rel)))
        (d/destroy a)
        (.delete (io/file rel))))
    (testing "bad input is a clear error naming what is wrong"
      (doseq [[bad re] [[{:dbtype "sqlite" :dbname ":memory:"} #"in-memory"]
                        ["jdbc:sqlite::memory:" #"in-memory"]
                        [{:dbtype "sqlite"} #":dbname"]
                        [{:dbtype "postgresql" :dbname "x"} #":dbtype"]
                        ["postgresql://h/db" #"jdbc:sqlite:"]
                        [42 #":db-config"]
                        [(spec (io/file dir "no-such-dir" "x.db")) #"no-such-dir.*does not exist"]
                        [{:dbtype "sqlite" :dbname path :busy-timeout-ms -1} #":busy-timeout-ms"]]]
        (let [e (try (d/sqlite-atom bad "t") nil (catch Exception e e))]
          (is (some? e) (pr-str bad))
          (is (re-find re (str (ex-message e))) (str (pr-str bad) " -> " (ex-message e)))
          (is (= :sqlite-db (:duratom/backend (ex-data e))))))
      (is (thrown-with-msg? clojure.lang.ExceptionInfo #":table-name" (d/sqlite-atom (spec path) "")))
      (is (thrown-with-msg? clojure.lang.ExceptionInfo #":row-id" (d/sqlite-atom (spec path) "t" "0")))
      (is (thrown-with-msg? clojure.lang.ExceptionInfo #":column-type"
                            (d/sqlite-atom (spec path) "t" 0 nil 1 {:column-type :jsonb}))))))

(deftest compatible-with-tables-of-the-original-library
  ;; The original created (id, value) tables through clojure.java.jdbc and
  ;; stored pr-str'd EDN as text; both key shapes must work as they are.
  (doseq [ddl ["CREATE TABLE orig (id integer, value text)"
               "CREATE TABLE orig (id INTEGER PRIMARY KEY, value TEXT)"]]
    (let [path (str (io/file (ts/temp-dir) "orig.db"))]
      (python (str "import sqlite3,sys\nc=sqlite3.connect(sys.argv[1])\nc.execute(sys.argv[2])\n"
                   "c.execute(\"INSERT INTO orig VALUES (0, '{:a #sorted/map {:b 1}, :q #queue [1 2]}')\")\n"
                   "c.execute(\"INSERT INTO orig VALUES (3, '[:other :row]')\")\nc.commit()")
              path ddl)
      (let [a (d/sqlite-atom (spec path) "orig" 0 nil :unused {:commit-mode :sync})]
        (is (= {:a {:b 1} :q [1 2]} @a) ddl)
        (is (sorted? (:a @a)))
        (is (instance? clojure.lang.PersistentQueue (:q @a)))
        (swap! a assoc :c (sorted-set 3 1))
        (let [[value type] (str/split (python-query path "SELECT value, typeof(value) FROM orig WHERE id = 0") #"\|")]
          (is (= "text" type) "still text, as the original reads it")
          (is (= @a (clojure.edn/read-string readers/default value)) "plain EDN with the original's tags"))
        (is (= "[:other :row]" (python-query path "SELECT value FROM orig WHERE id = 3")) "other rows untouched")
        (is (= ddl (python-query path "SELECT sql FROM sqlite_master WHERE name = 'orig'")) "the table as it was")))))

(deftest binary-rw-uses-a-blob-column
  (let [path (str (io/file (ts/temp-dir) "bin.db"))
        rw {:read nippy/thaw :write nippy/freeze :column-type :blob :commit-mode :sync}
        a (d/sqlite-atom (spec path) "bin" 0 nil {:bytes (byte-array [0 1 2]) :n 1} rw)]
    (swap! a update :n inc)
    (is (= 2 (:n @(d/sqlite-atom (spec path) "bin" 0 nil nil rw))))
    (is (= "blob" (python-query path "SELECT typeof(value) FROM bin")))
    (d/destroy a)))

(defn- hold-lock
  "Starts python3 holding an EXCLUSIVE transaction on `path` until its stdin
  closes or it is killed; returns the Process once the lock is held."
  ^Process [path]
  (let [p (.start (ProcessBuilder. ["python3" "-c"
                                    (str "import sqlite3,sys\n"
                                         "c=sqlite3.connect(sys.argv[1], isolation_level=None)\n"
                                         "c.execute('BEGIN EXCLUSIVE')\nprint('locked', flush=True)\n"
                                         "sys.stdin.read()\nc.execute('ROLLBACK')")
                                    (str path)]))]
    (is (= "locked" (.readLine (BufferedReader. (InputStreamReader. (.getInputStream p))))))
    p))

(deftest a-database-locked-by-another-process
  (let [loc ((:new-location backend))
        path (:path loc)
        db-spec (assoc (spec path) :busy-timeout-ms 500)]
    (testing "sync: swap! waits the busy timeout, then throws saying so; memory keeps the durable value"
      (let [dura (d/sqlite-atom db-spec "t" 0 nil 1 {:commit-mode :sync})
            holder (hold-lock path)
            t0 (System/nanoTime)
            e (try (swap! dura inc) nil (catch Exception e e))
            ms (/ (- (System/nanoTime) t0) 1e6)]
        (is (some? e))
        (is (re-find #"locked by another connection" (str (ex-message e))) (ex-message e))
        (is (re-find #"state\.db table t row 0" (str (ex-message e))) "names the resource")
        (is (< 400 ms 5000) (str "waited " ms " ms"))
        (is (= 1 @dura))
        (.close (.getOutputStream holder))
        (is (.waitFor holder 1 TimeUnit/MINUTES))
        (is (= 2 (swap! dura inc)))
        (is (= 2 (d/backend-snapshot dura)))
        (d/destroy dura)))
    (testing "async: flush! reports the lock; the state lands once it is released"
      (let [dura (d/sqlite-atom db-spec "t" 1 nil 1 nil)
            _ (is (d/flush! dura 10000))
            holder (hold-lock path)]
        (swap! dura inc)
        (is (thrown-with-msg? Exception #"locked by another connection" (d/flush! dura 30000)))
        (is (:pending? (d/stats dura)))
        (.close (.getOutputStream holder))
        (is (.waitFor holder 1 TimeUnit/MINUTES))
        (is (true? (d/flush! dura 30000)))
        (is (= "2" (python-query path "SELECT value FROM t WHERE id = 1")))
        (d/destroy dura)))
    (testing "a killed lock holder: the OS drops its lock and the waiting swap! goes through"
      (let [dura (d/sqlite-atom (spec path) "t" 2 nil 1 {:commit-mode :sync})
            holder (hold-lock path)
            swapping (future (swap! dura inc))]
        (is (= ::still-waiting (deref swapping 300 ::still-waiting)) "swap! waits while another process holds the lock")
        (.destroyForcibly holder) ; SIGKILL
        (.waitFor holder 1 TimeUnit/MINUTES)
        (is (= 2 (deref swapping 60000 ::timed-out)))
        (is (= 2 (d/backend-snapshot dura)))
        (d/destroy dura)))))

(deftest the-directory-removed
  (let [dir (ts/temp-dir)
        path (io/file dir "gone.db")
        dura (d/sqlite-atom (spec path) "t" 0 nil {:n 1} {:commit-mode :sync})]
    (ts/sh! "rm" "-rf" (str dir))
    (let [e (try (swap! dura update :n inc) nil (catch Exception e e))]
      (is (some? e) "no commit into a deleted file")
      (is (re-find #"does not exist" (str (ex-message e))) (ex-message e))
      (is (str/includes? (str (ex-message e)) (str dir)) "names the directory"))
    (is (= {:n 1} @dura))
    (.mkdirs dir)
    (is (= {:n 2} (swap! dura update :n inc)) "a new database at the path takes the state")
    (is (= "{:n 2}" (python-query path "SELECT value FROM t WHERE id = 0")))
    (d/destroy dura)))

(deftest crash-durability-under-sigkill
  (let [path (io/file (ts/temp-dir) "crash.db")
        rnd (java.util.Random. 42)
        kills 20
        code (str "(require 'duratom.core)"
                  "(let [a (duratom.core/sqlite-atom " (pr-str (spec path)) " \"t\" 0 nil {:n 0} {:commit-mode :sync})]"
                  "  (loop [] (let [v (:n (swap! a update :n inc))] (println v) (flush)) (recur)))")]
    (dotimes [i kills]
      (let [acked (ts/sigkill-after-acks code (inc (.nextInt rnd 200)))]
        (is (some? acked) "the child acknowledged commits before the kill")
        (let [stored (:n @(d/sqlite-atom (spec path) "t" 0 nil nil {:commit-mode :sync}))]
          (is (and (some? stored) (>= stored acked))
              (str "kill " i ": stored " stored ", last acknowledged " acked)))))
    (is (= "ok" (python-query path "PRAGMA integrity_check")))))

(def ^:private jdbc-interleavings-code
  "A child JVM's program: a sync duratom on the database at `path` swaps
  while the same JVM opens, reads, writes (another row, another table) and
  closes that database through sqlite-jdbc (a second SQLite copy in the
  process), in several orders; the duratom's `:rw` is `rw`. Prints each
  acknowledged :n, then `done`."
  '(fn [path rw]
    (let [url (str "jdbc:sqlite:" path)
         a (duratom.core/sqlite-atom {:dbtype "sqlite" :dbname path} "duratom_state" 0 nil {:n 0} rw)
         open (fn [] (java.sql.DriverManager/getConnection url))
         exec! (fn [^java.sql.Connection c sql] (with-open [s (.createStatement c)] (.execute s sql)))
         query (fn [^java.sql.Connection c sql]
                 (with-open [s (.createStatement c) r (.executeQuery s sql)] (.next r) (.getString r 1)))
         ack! (fn [v] (println (:n v)) (flush))]
     (with-open [c (open)]
       (exec! c "CREATE TABLE IF NOT EXISTS app (i INTEGER)"))
     (dotimes [i 60]
       (case (mod i 5)
         ;; swap, then a reader comes and goes
         0 (do (ack! (swap! a update :n inc))
               (with-open [c (open)] (query c "SELECT value FROM duratom_state WHERE id = 0")))
         ;; a writer of another table opens first and closes after the swap
         1 (let [c (open)]
             (exec! c (str "INSERT INTO app VALUES (" i ")"))
             (ack! (swap! a update :n inc))
             (.close c))
         ;; a writer of another row of duratom's table comes and goes, then the swap
         2 (do (with-open [c (open)]
                 (exec! c (str "INSERT INTO duratom_state (id, value) VALUES (" (+ 1000 i) ", 'app')")))
               (ack! (swap! a update :n inc)))
         ;; a connection held across two swaps while another comes and goes between them
         3 (let [held (open)]
             (query held "SELECT count(*) FROM app")
             (ack! (swap! a update :n inc))
             (with-open [c (open)] (exec! c (str "INSERT INTO app VALUES (" i ")")))
             (ack! (swap! a update :n inc))
             (query held "SELECT value FROM duratom_state WHERE id = 0")
             (.close held))
         ;; two connections close in the order opposite to their opening, around a swap
         4 (let [c1 (open) c2 (open)]
             (query c1 "SELECT value FROM duratom_state WHERE id = 0")
             (ack! (swap! a update :n inc))
             (exec! c2 (str "INSERT INTO app VALUES (" i ")"))
             (.close c1)
             (.close c2))))
     (println "done")
     (flush))))

(defn- run-jdbc-interleavings
  "Runs jdbc-interleavings-code with `rw` in a child JVM on a new database;
  checks what both copies acknowledged is there. Returns the database path."
  [rw]
  (let [path (str (io/file (ts/temp-dir) "app.db"))
        out (ts/child-output (str "(require 'duratom.core) (" (pr-str jdbc-interleavings-code) " " (pr-str path)
                                  " " (pr-str rw) ")"))
        lines (str/split-lines out)
        acked (keep #(when (re-matches #"\d+" %) (Long/parseLong %)) lines)]
    (is (= "done" (last lines)) out)
    (is (= (range 1 (inc (count acked))) acked) "each swap acknowledged the next state")
    (is (= 72 (last acked)))
    (is (= {:n 72} @(d/sqlite-atom (spec path) "duratom_state" 0 nil nil rw))
        "the last acknowledged state is stored")
    (is (= "36" (python-query path "SELECT count(*) FROM app")) "sqlite-jdbc's own rows are kept")
    (is (= "12" (python-query path "SELECT count(*) FROM duratom_state WHERE value = 'app'")))
    (is (= "ok" (python-query path "PRAGMA integrity_check")))
    path))

(deftest sqlite-jdbc-in-the-same-jvm-loses-no-acknowledged-commit
  ;; Two SQLite copies in one process (ours and sqlite-jdbc's): every
  ;; acknowledged commit must survive the other copy's closes and checkpoints.
  (let [path (run-jdbc-interleavings {:commit-mode :sync})]
    (is (= "{:n 72}" (python-query path "SELECT value FROM duratom_state WHERE id = 0"))
        "the row holds the last acknowledged state")))

(deftest a-failed-construction-leaves-no-database-behind
  (doseq [[why init] [["an :init that throws" (fn [] (throw (ex-info "no initial state" {})))]
                      ["an :init the codec refuses" {:bad (Object.)}]]]
    (testing why
      (let [dir (ts/temp-dir)
            path (io/file dir "new.db")]
        (is (thrown? Exception (d/sqlite-atom (spec path) "t" 0 nil init {:commit-mode :sync})))
        (is (= [] (vec (.list dir))) "no database file left behind")))))

(def ^:private wal-removal-code
  "A child JVM's program: a sync duratom on `path` does `n` swaps, printing
  each acknowledged :n, then `ready`; then, for each line read from stdin,
  one more swap, printing `ok N` or `error MESSAGE` on one line."
  '(fn [path n]
     (let [a (duratom.core/sqlite-atom {:dbtype "sqlite" :dbname path} "t" 0 nil {:n 0} {:commit-mode :sync})
           out (fn [& xs] (println (clojure.string/replace (apply str xs) "\n" " ")) (flush))]
       (dotimes [_ n] (out (:n (swap! a update :n inc))))
       (out "ready")
       (doseq [_ (line-seq (java.io.BufferedReader. *in*))]
         (out (try (str "ok " (:n (swap! a update :n inc)))
                   (catch Exception e (str "error " (ex-message e)))))))))

(defn- start-wal-child
  "Starts wal-removal-code on `path` for `n` swaps; returns [process
  line-reader acknowledged-values] once it printed `ready`."
  [path n]
  (let [child (ts/child-jvm (str "(require 'duratom.core) (" (pr-str wal-removal-code) " " (pr-str path) " " n ")"))
        r (BufferedReader. (InputStreamReader. (.getInputStream child)))
        acked (loop [acc []]
                (let [line (.readLine r)]
                  (cond (nil? line) (throw (ex-info "the child ended before ready" {:acked acc}))
                        (= "ready" line) acc
                        :else (recur (conj acc (Long/parseLong line))))))]
    [child r acked]))

(defn- sigkill! [^Process child]
  (.destroyForcibly child)
  (is (.waitFor child 1 TimeUnit/MINUTES)))

(deftest the-wal-removed-then-the-process-killed-loses-no-acknowledged-commit
  (let [path (str (io/file (ts/temp-dir) "wal.db"))
        wal (io/file (str path "-wal"))
        stored #(:n @(d/sqlite-atom (spec path) "t" 0 nil nil {:commit-mode :sync}))]
    (testing "removed after the acknowledgements, killed before any further call"
      (let [[child _ acked] (start-wal-child path 25)]
        (is (= (range 1 26) acked))
        (is (.delete wal) "the WAL existed and is removed")
        (sigkill! child)
        (is (= 25 (stored)) "every acknowledged commit is in the database file")))
    (testing "removed, then the next swap! reports it naming the file; killed after"
      (let [[child r acked] (start-wal-child path 10)
            w (.getOutputStream ^Process child)]
        (is (= (range 26 36) acked))
        (is (.delete wal))
        (.write w (.getBytes "swap\n"))
        (.flush w)
        (let [line (.readLine ^BufferedReader r)]
          (is (str/starts-with? (str line) "error ") line)
          (is (str/includes? (str line) (str wal " was removed")) "names the removed WAL file"))
        (.write w (.getBytes "swap\n"))
        (.flush w)
        (is (= "ok 36" (.readLine ^BufferedReader r)) "the call after the report goes on")
        (.delete wal)
        (sigkill! child)
        (is (= 36 (stored)))))
    (is (= "ok" (python-query path "PRAGMA integrity_check")))))

(deftest a-failed-construction-racing-another-duratom-leaves-that-duratoms-state
  ;; One duratom creates a new database and its :init throws; as it does,
  ;; another duratom opens the same database and stores its state. The
  ;; failed construction's clean-up must never take that state away. (The
  ;; other starts once the database is in WAL mode: two connections making
  ;; a new file WAL at once wait out each other's busy timeout.)
  (dotimes [i 40]
    (let [path (io/file (ts/temp-dir) "raced.db")
          opened (promise)
          failing (future (try (d/sqlite-atom (spec path) "t" 0 nil
                                              (fn [] (deliver opened true) (throw (ex-info "no initial state" {})))
                                              {:shared? true})
                               (catch Exception _ :failed)))
          winning (future @opened
                          (let [a (d/sqlite-atom (spec path) "t" 0 nil {:i i} {:shared? true :commit-mode :sync})]
                            (swap! a assoc :w true)))]
      (is (= :failed @failing))
      (is (= {:i i :w true} @winning))
      (is (= (pr-str {:i i :w true}) (python-query path "SELECT value FROM t WHERE id = 0")) (str "round " i)))))

;; ------------------------------------------------------------------ log mode

(defn- log-atom
  "A sync log-mode duratom on row 0 of table t of the database at `path`."
  [path init & [rw]]
  (d/sqlite-atom (spec path) "t" 0 nil init (merge {:commit-mode :sync :log? true} rw)))

(defn- records-in
  "How many change records row 0 of table t has, as python3's sqlite3 counts them."
  [path]
  (python-query path "SELECT count(*) FROM t_duratom_log WHERE id = 0"))

(defn- row-value
  "Row 0 of table t, read by python3's sqlite3 as EDN."
  [path]
  (clojure.edn/read-string readers/default (python-query path "SELECT value FROM t WHERE id = 0")))

(deftest log-mode-appends-records-beside-the-row-and-a-reopened-duratom-replays-them
  (let [path (io/file (ts/temp-dir) "log.db")
        init (into {} (map (fn [i] [i {:n i}]) (range 1000)))
        a (log-atom path init)]
    (swap! a assoc-in [7 :n] :seven)
    (swap! a dissoc 8)
    (swap! a assoc :new (sorted-set 1 2) :day (java.time.LocalDate/of 2024 2 29))
    (let [s (d/stats a)]
      (is (= 3 (:log-records s)) "three records since the base")
      (is (pos? (:log-bytes s))))
    (is (= "3" (records-in path)) "the records are in the records table")
    (is (= init (row-value path)) "the row holds the base until compaction")
    (let [again @(log-atom path nil)]
      (is (= @a again) "a reopened duratom replays them")
      (is (sorted? (:new again)) "with the types committed"))))

(deftest log-mode-is-a-sqlite-constructor-keyword-too
  (let [path (io/file (ts/temp-dir) "log.db")
        init (into {:n 0} (map (fn [i] [i i]) (range 100)))
        a (d/duratom :sqlite-db :db-config (spec path) :table-name "t" :init init :log? true :rw {:commit-mode :sync})]
    (swap! a update :n inc)
    (is (= 1 (:log-records (d/stats a))))
    (is (= "1" (records-in path)))
    (is (= (assoc init :n 1) @(log-atom path nil)))))

(deftest log-mode-compaction-leaves-plain-edn-in-the-row
  (let [path (io/file (ts/temp-dir) "log.db")
        a (log-atom path {:n 0 :pad (vec (range 500))})]
    (dotimes [_ 5] (swap! a update :n inc))
    (is (= "5" (records-in path)))
    (d/compact! a)
    (is (zero? (:log-records (d/stats a))))
    (is (= "0" (records-in path)) "compacted: the row's records are removed")
    (is (= @a (row-value path)) "the row alone is the state, plain EDN")
    (is (= @a @(d/sqlite-atom (spec path) "t" 0 nil nil {:commit-mode :sync}))
        "a duratom not in log mode reads the compacted row")
    (swap! a update :n inc)
    (let [e (try (d/sqlite-atom (spec path) "t" 0 nil nil {:commit-mode :sync}) nil (catch Exception e e))]
      (is (and e (str/includes? (ex-message e) "log mode") (str/includes? (ex-message e) "t_duratom_log"))
          "a row with records refuses a duratom not in log mode, saying why"))
    (is (= 6 (:n @(log-atom path nil))))))

(deftest log-mode-refuses-a-custom-rw
  (let [path (io/file (ts/temp-dir) "log.db")
        e (try (d/sqlite-atom (spec path) "t" 0 nil {} {:log? true :read read-string :write pr-str})
               nil
               (catch IllegalArgumentException e e))]
    (is (and e (str/includes? (ex-message e) ":log? true needs duratom's EDN encoding")))))

(deftest shared-mode-in-log-mode-loses-no-update-across-processes
  ;; Three processes append to one row: each append is conditional on the
  ;; version its process last saw, so a stale one conflicts and is retried.
  (let [path (io/file (ts/temp-dir) "shared.db")
        a (log-atom path {:n 0 :pad (vec (range 500))} {:shared? true})
        code (str "(require 'duratom.core)"
                  "(let [a (duratom.core/sqlite-atom " (pr-str (spec path)) " \"t\" 0 nil nil {:shared? true :log? true})]"
                  "  (dotimes [_ 200] (swap! a update :n inc)) (println :done))")
        kids (doall (repeatedly 2 #(future (ts/child-output code))))
        ;; the parent swaps until both children are done, so that its
        ;; appends meet theirs
        mine (loop [n 0] (if (every? realized? kids) n (do (swap! a update :n inc) (recur (inc n)))))]
    (doseq [k kids] (is (str/includes? @k ":done")))
    (is (= (+ 400 mine) (:n (d/refresh! a))))
    (is (= (+ 400 mine) (:n @(log-atom path nil))))))

(deftest a-stale-append-conflicts-and-is-retried-on-the-newest-state
  (let [path (io/file (ts/temp-dir) "stale.db")
        a (log-atom path {:a 0 :b 0 :pad (vec (range 500))} {:shared? true})
        b (log-atom path nil {:shared? true})]
    (swap! a update :a inc)
    (is (= "1" (records-in path)))
    (is (= {:a 1 :b 1} (select-keys (swap! b update :b inc) [:a :b]))
        "b's append after the version it read conflicted; b reloaded and swapped again")
    (is (= 1 (:conflicts (d/stats b))))
    (is (= "2" (records-in path)) "one record each: the refused append wrote nothing")
    (is (= {:a 1 :b 1} (select-keys @(log-atom path nil) [:a :b])))))

(deftest log-mode-commits-acknowledged-before-sigkill-survive
  (let [path (io/file (ts/temp-dir) "crash.db")
        rnd (java.util.Random. 11)
        code (str "(require 'duratom.core)"
                  "(let [a (duratom.core/sqlite-atom " (pr-str (spec path)) " \"t\" 0 nil {:n 0 :pad (vec (range 2000))}"
                  "          {:commit-mode :sync :log? true})]"
                  "  (loop [i 0] (let [v (:n (swap! a update :n inc))]"
                  "    (when (zero? (mod i 97)) (duratom.core/compact! a))"
                  "    (println v) (flush)) (recur (inc i))))")]
    (dotimes [i 25]
      (let [acked (ts/sigkill-after-acks code (inc (.nextInt rnd 300)))]
        (is (some? acked))
        (let [stored (:n @(log-atom path nil))]
          (is (and (some? stored) (>= stored acked))
              (str "kill " i ": stored " stored ", last acknowledged " acked)))))
    (is (= "ok" (python-query path "PRAGMA integrity_check")))))

(deftest sqlite-jdbc-in-the-same-jvm-loses-no-acknowledged-log-mode-commit
  (let [path (run-jdbc-interleavings {:commit-mode :sync :log? true})]
    (is (pos? (Long/parseLong (python-query path "SELECT count(*) FROM duratom_state_duratom_log WHERE id = 0")))
        "the commits were appended as records")))

(deftest destroy-in-log-mode-removes-the-row-and-its-records
  (let [path (io/file (ts/temp-dir) "log.db")
        a (log-atom path {:n 0})
        other (d/sqlite-atom (spec path) "t" 1 nil {:m 0} {:commit-mode :sync :log? true})]
    (swap! a update :n inc)
    (swap! other update :m inc)
    (is (= "1" (records-in path)))
    (d/destroy a)
    (is (= "0|1" (python-query path "SELECT (SELECT count(*) FROM t WHERE id = 0), (SELECT count(*) FROM t_duratom_log WHERE id = 1)"))
        "row 0 and its records are gone; row 1's records stay")
    (is (= "0" (records-in path)))
    (is (= {:m 1} @(d/sqlite-atom (spec path) "t" 1 nil nil {:commit-mode :sync :log? true})))))

(defn- landing-unknown
  "Runs `(f)` with the first commit made for real and then reported as of
  unknown outcome, as a checkpoint kept from finishing reports it."
  [f]
  (let [real storage/commit!
        armed (atom true)]
    (with-redefs [storage/commit!
                  (fn [store encoded expected last-seen]
                    (let [v (real store encoded expected last-seen)]
                      (if (compare-and-set! armed true false)
                        (throw (ex-info "test store: commit: outcome unknown (arranged by the test)"
                                        {:duratom/backend :sqlite-db :duratom/op :commit
                                         :duratom/outcome-unknown? true}))
                        v)))]
      (f))))

(deftest an-append-of-unknown-outcome-that-landed-is-adopted
  ;; Storage then holds the base and the record, not the record's bytes: the
  ;; append is recognised by the state it records.
  (let [path (io/file (ts/temp-dir) "doubt.db")
        a (log-atom path {:n 0 :pad (vec (range 500))})
        seen (atom [])]
    (add-watch a :w (fn [_ _ o n] (swap! seen conj [(:a o) (:b o) (:a n) (:b n)])))
    (landing-unknown
     (fn []
       (is (thrown? Exception (swap! a assoc :a 1)))
       (is (= "1" (records-in path)) "the append landed")
       (is (= [1 1] ((juxt :a :b) (swap! a assoc :b 1))) "the next swap! builds on the landed state")))
    (is (= [[nil nil 1 nil] [1 nil 1 1]] @seen) "the watches saw the landed state, then the next")
    (is (= [1 1] ((juxt :a :b) @(log-atom path nil))))))

(deftest a-compaction-of-unknown-outcome-that-landed-is-no-change
  (let [path (io/file (ts/temp-dir) "doubt.db")
        a (log-atom path {:n 0 :pad (vec (range 500))})
        seen (atom [])]
    (swap! a update :n inc)
    (add-watch a :w (fn [_ _ o n] (swap! seen conj [(:n o) (:n n)])))
    (landing-unknown
     (fn []
       (is (thrown? Exception (d/compact! a)))
       (is (= "0" (records-in path)) "the compaction landed")
       (is (= 2 (:n (swap! a update :n inc))))))
    (is (= [[1 2]] @seen) "no watch call for the compaction, which changed no state")))
