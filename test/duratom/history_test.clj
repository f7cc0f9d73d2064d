(ns duratom.history-test
  "The history checker run for each commit mode and backend: see
  duratom.history. Each run prints a report line; a failing run prints its
  seed, which DURATOM_HISTORY_SEED replays. Besides finding no violation,
  every run must have done what it was asked: operations ran, mutations
  returned, and every fault asked for was injected."
  (:require [clojure.java.io :as io]
            [clojure.pprint :as pp]
            [clojure.test :refer [deftest is]]
            [clojure.string :as str]
            [duratom.history :as h]
            [duratom.network-test :as net]
            [duratom.test-support :as ts]))

(defn- report!
  "Prints the run's report; on violations, the seed and the first two of each kind."
  [name seed {:keys [violations ops fault-phase tally errors watches faults interrupts secs compactions]}]
  (println (format "history %s seed %d: %d operations checked (%d during faults, %d mutations of them returned; %s), %d watch calls, faults injected %s, %d interrupts, %d violations, %.1f s%s"
                   name seed (or ops 0) (:ops fault-phase 0) (:returned fault-phase 0)
                   (pr-str (into (sorted-map) (map (fn [[[k o] c]] [(str (some-> k clojure.core/name) "/" (some-> o clojure.core/name)) c]) tally)))
                   (or watches 0) (pr-str (into (sorted-map) faults)) (or interrupts 0) (count violations) (double (or secs 0))
                   (if (pos? (:ran compactions 0))
                     (format "; %d compactions folded in %d change records" (:ran compactions) (:records compactions))
                     "")))
  (doseq [[e n] (sort-by (comp - val) errors)]
    (println (format "  %6d threw %s" n e)))
  (when (seq violations)
    (doseq [[c n] (frequencies (map :check violations))]
      (println (format "  %6d violations of: %s" n c)))
    (println (str "history " name ": replay with DURATOM_HISTORY_SEED=" seed "; first violations:"))
    (binding [*print-length* 20]
      (pp/pprint (mapcat #(take 2 (val %)) (group-by :check violations))))))

(defn- check-it-ran
  "A run that checked nothing must not pass: while faults were injected,
  operations ran and mutations returned, and every fault kind in `faults`
  was injected at least once (too short a DURATOM_HISTORY_SECS fails here,
  saying so); in log mode, compactions ran and folded in change records
  (so commits appended records between them)."
  [name seed {:keys [faults log?]} {:keys [fault-phase interrupts compactions] :as report}]
  (let [where (str "history " name " seed " seed ": ")]
    (when log?
      (is (pos? (:ran compactions 0)) (str where "compactions ran"))
      (is (pos? (:records compactions 0)) (str where "commits appended change records that compactions folded in")))
    (is (pos? (:ops fault-phase 0)) (str where "operations ran while faults were injected"))
    (is (pos? (:returned fault-phase 0)) (str where "mutations returned while faults were injected"))
    (doseq [kind (filter faults h/storage-fault-kinds)]
      (is (pos? (get (:faults report) kind 0))
          (str where "a " (clojure.core/name kind) " fault was injected (a run of "
               (:secs (h/settings)) " s too short, or a broken injector)")))
    (when (:interrupts faults)
      (is (pos? (or interrupts 0)) (str where "threads were interrupted")))))

(defn- run-seeds
  "Runs `run` (fn [opts] report) for each seed with `opts` (:faults,
  :without, :log?), which the DURATOM_HISTORY_* environment variables override."
  [name fixed-seed opts run]
  (let [{:keys [secs threads] :as env} (h/settings)
        opts (merge {:without #{}} opts (into {} (filter (comp some? val) (select-keys env [:faults :without]))))]
    (doseq [seed (h/seeds fixed-seed)]
      (let [report (run (assoc opts :seed seed :secs secs :threads (or threads (:threads opts) 6)))]
        (report! name seed report)
        (check-it-ran name seed opts report)
        (is (zero? (count (:violations report)))
            (str "history " name ": the engine's promises hold (replay with DURATOM_HISTORY_SEED=" seed ")"))))))

(defn- run-shared-seeds
  "As run-seeds, for h/run-shared, which runs every seed with one set of
  child JVMs."
  [name fixed-seed opts new-loc]
  (let [{:keys [secs threads] :as env} (h/settings)
        opts (merge {:without #{}} opts (into {} (filter (comp some? val) (select-keys env [:faults :without]))))
        t0 (System/nanoTime)
        reports (h/run-shared (assoc opts :seeds (h/seeds fixed-seed) :secs secs :threads (or threads (:threads opts) 6)
                                     :new-loc new-loc))]
    (println (format "history %s: %.1f s in all, child JVM start included" name (/ (- (System/nanoTime) t0) 1e9)))
    (is (seq reports) (str "history " name ": a run happened"))
    (doseq [{:keys [seed] :as report} reports]
      (report! name seed report)
      (check-it-ran name seed opts report)
      (is (zero? (count (:violations report)))
          (str "history " name ": the engine's promises hold (replay with DURATOM_HISTORY_SEED=" seed ")")))))

(defn- file-loc [] {:backend :file :path (str (io/file (ts/temp-dir) "state.edn"))})

;; Every combination of faults and operations runs now. Writes whose outcome
;; is unknown (a file whose directory fsync failed after the rename,
;; PostgreSQL stopped during a commit) are recognised when they land: a
;; synchronous duratom adopts them, an asynchronous one (refresh! included)
;; records their version and keeps the newest state.

(deftest history-file-sync
  (run-seeds "file sync" 1401 {:faults #{:storage :interrupts}}
             #(h/run-local (assoc % :loc (file-loc) :mode :sync))))

(deftest history-file-async
  (run-seeds "file async" 1402 {:faults #{:storage :interrupts}}
             #(h/run-local (assoc % :loc (file-loc) :mode :async))))

(deftest history-file-shared
  (run-shared-seeds "file shared (3 processes)" 1403 {:faults #{:storage :interrupts}} file-loc))

(deftest history-file-sync-log
  (run-seeds "file sync, log mode" 1404 {:faults #{:storage :interrupts} :log? true}
             #(h/run-local (assoc % :loc (file-loc) :mode :sync))))

(deftest history-file-async-log
  (run-seeds "file async, log mode" 1405 {:faults #{:storage :interrupts} :log? true}
             #(h/run-local (assoc % :loc (file-loc) :mode :async))))

(deftest history-file-shared-log
  (run-shared-seeds "file shared (3 processes), log mode" 1406 {:faults #{:storage :interrupts} :log? true} file-loc))

(defn- pg-loc
  "A fresh table on the PostgreSQL server inside the network namespace, so
  that the :network fault can cut its link."
  []
  {:backend :pg :db-spec (net/pg-spec) :server-dir (ts/net-server-dir "pg")
   :table (str/replace (ts/unique-name "history") "-" "_")})

(deftest history-postgres-sync
  ;; 16 threads: a waiter whose group failed while a later group landed
  ;; must still throw, and that interleaving needs many threads waiting at once
  (run-seeds "postgres sync" 1411 {:faults #{:storage :refusal :network :interrupts} :threads 16}
             #(h/run-local (assoc % :loc (pg-loc) :mode :sync))))

(deftest history-postgres-async
  (run-seeds "postgres async" 1412 {:faults #{:storage :refusal :network :interrupts}}
             #(h/run-local (assoc % :loc (pg-loc) :mode :async))))

(deftest history-postgres-shared
  (run-shared-seeds "postgres shared (3 processes)" 1413 {:faults #{:storage :refusal :network :interrupts}} pg-loc))

(defn- s3-loc
  "A fresh key on the S3 server inside the network namespace, so that the
  :network fault can cut its link."
  []
  {:backend :s3 :creds (net/s3-creds) :bucket "duratom-history" :key (str "history/" (ts/unique-name "k"))})

;; S3 with network faults and interrupts; freezing the S3 server mid-commit
;; is tested on its own in s3_test.
(deftest history-s3-sync
  (run-seeds "s3 sync" 1421 {:faults #{:network :interrupts}}
             #(h/run-local (assoc % :loc (s3-loc) :mode :sync))))

(deftest history-s3-async
  (run-seeds "s3 async" 1422 {:faults #{:network :interrupts}}
             #(h/run-local (assoc % :loc (s3-loc) :mode :async))))

(deftest history-s3-shared
  (run-shared-seeds "s3 shared (3 processes)" 1423 {:faults #{:network :interrupts}} s3-loc))

(defn- redis-loc
  "A fresh key on the Redis server inside the network namespace, so that the
  :network fault can cut its link; waits bounded by a second, shorter than
  the longer cuts, so that some commits end as outcome unknown."
  []
  {:backend :redis :conn (net/redis-conn 1000) :server-dir (ts/net-server-dir "redis")
   :key (str "duratom:history:" (ts/unique-name "k"))})

;; Redis runs with appendfsync always, so the server stopped and started
;; (:storage) keeps every acknowledged write; :refusal takes the write
;; commands away from its user (ACL).
(deftest history-redis-sync
  (run-seeds "redis sync" 1431 {:faults #{:storage :refusal :network :interrupts}}
             #(h/run-local (assoc % :loc (redis-loc) :mode :sync))))

(deftest history-redis-async
  (run-seeds "redis async" 1432 {:faults #{:storage :refusal :network :interrupts}}
             #(h/run-local (assoc % :loc (redis-loc) :mode :async))))

(deftest history-redis-shared
  (run-shared-seeds "redis shared (3 processes)" 1433 {:faults #{:storage :refusal :network :interrupts}} redis-loc))

(defn- sqlite-loc
  "A fresh database file in a directory of its own (the :storage fault moves
  the directory away and back; the :wal fault removes the WAL file)."
  []
  {:backend :sqlite :path (str (io/file (ts/temp-dir) "state.db")) :table "duratom_history"})

(deftest history-sqlite-sync
  (run-seeds "sqlite sync" 1441 {:faults #{:storage :wal :interrupts}}
             #(h/run-local (assoc % :loc (sqlite-loc) :mode :sync))))

(deftest history-sqlite-async
  (run-seeds "sqlite async" 1442 {:faults #{:storage :wal :interrupts}}
             #(h/run-local (assoc % :loc (sqlite-loc) :mode :async))))

(deftest history-sqlite-shared
  (run-shared-seeds "sqlite shared (3 processes)" 1443 {:faults #{:storage :wal :interrupts}} sqlite-loc))

(deftest history-sqlite-sync-log
  (run-seeds "sqlite sync, log mode" 1444 {:faults #{:storage :wal :interrupts} :log? true}
             #(h/run-local (assoc % :loc (sqlite-loc) :mode :sync))))

(deftest history-sqlite-async-log
  (run-seeds "sqlite async, log mode" 1445 {:faults #{:storage :wal :interrupts} :log? true}
             #(h/run-local (assoc % :loc (sqlite-loc) :mode :async))))

(deftest history-sqlite-shared-log
  (run-shared-seeds "sqlite shared (3 processes), log mode" 1446 {:faults #{:storage :wal :interrupts} :log? true} sqlite-loc))
