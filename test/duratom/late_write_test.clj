(ns duratom.late-write-test
  "A write whose outcome is unknown and that a server applies late, after a
  later commit landed, never replaces that commit: every commit to a store
  reached over a network is conditional on the version last seen.

  PostgreSQL: the server process of the duratom's own session is frozen
  (SIGSTOP) while it holds the request, the duratom goes on over a new
  session, and then the frozen process goes on. PostgreSQL, S3 and Redis:
  the request is held back by wrapping duratom.storage and sent to the real
  server, with the condition it was made under, after a later commit landed."
  (:require [clojure.string :as str]
            [clojure.test :refer [deftest is testing]]
            [duratom.core :as d]
            [duratom.postgres-test :refer [db-spec psql]]
            [duratom.redis-test :as redis]
            [duratom.s3-test :as s3]
            [duratom.storage :as storage]
            [duratom.test-support :as ts]))

(defn- session-pids [app]
  (remove str/blank? (str/split-lines (psql (str "SELECT pid FROM pg_stat_activity WHERE application_name = '" app "'")))))

(deftest postgres-a-late-write-from-a-frozen-session-never-replaces-a-later-commit
  (let [app (str/replace (ts/unique-name "late") "-" "_")
        table (str/replace (ts/unique-name "late") "-" "_")
        a (d/postgres-atom (assoc (db-spec) :timeout-ms 2000 :ApplicationName app) table 0 nil {:n 0}
                           (assoc d/default-postgres-rw :commit-mode :sync))]
    (swap! a update :n inc)
    (let [[pid] (session-pids app)]
      (is (some? pid) "the duratom's session is found")
      (ts/sh! "kill" "-STOP" pid)
      (let [e (try (swap! a assoc :late true) nil
                   (catch Throwable e e))]
        (is (some? e) "the swap! against the frozen session fails within its bound")
        (is (= {:n 1} @a)))
      (testing "a later commit lands over a new session while the first is frozen"
        (is (= {:n 1 :later true} (swap! a assoc :later true))))
      (ts/sh! "kill" "-CONT" pid)
      ;; the continued process runs what it had read, then sees its closed connection
      (let [deadline (+ (System/nanoTime) 20e9)]
        (while (and (some #{pid} (session-pids app)) (< (System/nanoTime) deadline))
          (Thread/yield)))
      (is (not (some #{pid} (session-pids app))) "the frozen session ended")
      (is (= {:n 1 :later true} (d/backend-snapshot a)) "the late write did not replace the later commit")
      (is (= {:n 2 :later true} (swap! a update :n inc)))
      (d/destroy a))))

(defn- with-held-write
  "Runs `(f)` with duratom.storage/commit! wrapped: the first commit is not
  sent but fails as one whose outcome is unknown; `(send-held!)` sends it to
  the real store later, with the condition it was made under, and returns
  what the store said (the new version, or nil for a refusal)."
  [f]
  (let [real-commit storage/commit!
        held (atom nil)]
    (with-redefs [storage/commit!
                  (fn [store encoded expected last-seen]
                    (if (compare-and-set! held nil [store encoded expected last-seen])
                      (throw (ex-info "test: commit: outcome unknown, the request is held back by the test"
                                      {:duratom/backend (:backend store) :duratom/op :commit
                                       :duratom/outcome-unknown? true}))
                      (real-commit store encoded expected last-seen)))]
      (f (fn send-held! []
           (let [[store encoded expected last-seen] @held]
             (real-commit store encoded expected last-seen)))))))

(defn- held-write-lands-late [open-duratom]
  (doseq [mode [:sync :duratom.core/async]]
    (testing (str mode)
      (let [a (open-duratom mode)]
        (swap! a assoc :n 1)
        (is (true? (d/flush! a 30000)))
        (with-held-write
          (fn [send-held!]
            (if (= mode :sync)
              (is (true? (:duratom/outcome-unknown? (ex-data (try (swap! a assoc :late true) nil
                                                                  (catch Throwable e e))))))
              (do (swap! a assoc :late true)
                  (try (d/flush! a 30000) (catch Throwable _ nil))))
            (swap! a assoc :later true)
            (is (true? (d/flush! a 30000)))
            (let [later (d/backend-snapshot a)]
              (is (:later later) "the later commit landed")
              (is (nil? (send-held! )) "the server refuses the held write: it was conditional")
              (is (= later (d/backend-snapshot a)) "the later commit stays"))))
        (d/destroy a)))))

(deftest postgres-a-held-write-sent-late-never-replaces-a-later-commit
  (held-write-lands-late
   #(d/postgres-atom (db-spec) (str/replace (ts/unique-name "held") "-" "_") 0 nil {}
                     (assoc d/default-postgres-rw :commit-mode %))))

(deftest s3-a-held-write-sent-late-never-replaces-a-later-commit
  (held-write-lands-late
   #(d/s3-atom (s3/creds) (ts/unique-name "held") "state" nil {} (assoc d/default-s3-rw :commit-mode %))))

(deftest redis-a-held-write-sent-late-never-replaces-a-later-commit
  (held-write-lands-late
   #(d/redis-atom (redis/conn) (ts/unique-name "held") nil {} (assoc d/default-redis-rw :commit-mode %))))
