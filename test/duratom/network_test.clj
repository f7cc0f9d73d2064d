(ns duratom.network-test
  "Network faults made by the kernel between a duratom and its server.
  PostgreSQL, S3 (moto) and Redis run inside a network namespace
  (scripts/netns; scripts/test sets it up as root and removes it after), and
  the tests cut, slow and reset the link while a synchronous or asynchronous
  duratom commits through it: every failure is bounded, a request that went
  out and got no answer is reported as of unknown outcome, the duratom
  recovers without being reopened, and nothing acknowledged is lost."
  (:require [clojure.string :as str]
            [clojure.test :refer [deftest is testing]]
            [duratom.core :as d]
            [duratom.test-support :as ts]))

(defn pg-spec
  "The namespace's PostgreSQL server as a :dbtype map, waits bounded by
  `timeout-ms` when given."
  ([] (pg-spec nil))
  ([timeout-ms]
   (let [e (ts/net-server-env "pg")]
     (cond-> {:dbtype "postgresql" :host (e "DURATOM_TEST_PG_HOST") :port (Long/parseLong (e "DURATOM_TEST_PG_PORT"))
              :dbname (e "DURATOM_TEST_PG_DB") :user (e "DURATOM_TEST_PG_USER") :password (e "DURATOM_TEST_PG_PASSWORD")}
       timeout-ms (assoc :timeout-ms timeout-ms)))))

(defn s3-creds
  "The namespace's S3 server's credentials, waits bounded by `timeout-ms`
  when given."
  ([] (s3-creds nil))
  ([timeout-ms]
   (let [e (ts/net-server-env "s3")]
     (cond-> {:access-key (e "DURATOM_TEST_S3_ACCESS_KEY") :secret-key (e "DURATOM_TEST_S3_SECRET_KEY")
              :endpoint (e "DURATOM_TEST_S3_ENDPOINT")}
       timeout-ms (assoc :timeout-ms timeout-ms)))))

(defn redis-conn
  "The namespace's Redis server as carmine's connection spec, waits bounded
  by `timeout-ms`."
  [timeout-ms]
  (let [e (ts/net-server-env "redis")]
    {:pool {} :spec {:host (e "DURATOM_TEST_REDIS_HOST") :port (Long/parseLong (e "DURATOM_TEST_REDIS_PORT"))
                     :password (e "DURATOM_TEST_REDIS_PASSWORD") :db 0 :timeout-ms timeout-ms}}))

(def ^:private timeout-ms 1500)

(def backends
  {:postgres {:name "postgres-db"
              :port #(Long/parseLong ((ts/net-server-env "pg") "DURATOM_TEST_PG_PORT"))
              :open (fn [init rw] (d/postgres-atom (pg-spec timeout-ms) (str/replace (ts/unique-name "net") "-" "_")
                                                   0 nil init rw))}
   :s3 {:name "aws-s3"
        :port #(Long/parseLong (re-find #"\d+$" ((ts/net-server-env "s3") "DURATOM_TEST_S3_ENDPOINT")))
        :open (fn [init rw] (d/s3-atom (s3-creds timeout-ms) "duratom-network" (str "net/" (ts/unique-name "k"))
                                       nil init rw))}
   :redis {:name "redis-db"
           :port #(Long/parseLong ((ts/net-server-env "redis") "DURATOM_TEST_REDIS_PORT"))
           :open (fn [init rw] (d/redis-atom (redis-conn timeout-ms) (str "duratom:net:" (ts/unique-name "k"))
                                             nil init rw))}})

(defn- timed
  "Runs `f`; returns [what it returned or nil, its exception or nil, seconds taken]."
  [f]
  (let [t0 (System/nanoTime)
        [r e] (try [(f) nil] (catch Throwable e [nil e]))]
    [r e (/ (- (System/nanoTime) t0) 1e9)]))

(defn- messages [^Throwable e]
  (str/join " | " (map #(.getMessage ^Throwable %) (take-while some? (iterate #(.getCause ^Throwable %) e)))))

(defn- add-id [v id] (update v :ids conj id))

;; The bound on a failing call: the backend's :timeout-ms covers each wait on
;; the server, and a call may wait twice (a connect after a send that failed);
;; a second of slack for scheduling on a loaded machine.
(def ^:private bound-secs (+ (* 2 (/ timeout-ms 1000.0)) 1.0))

(def ^:private slow-pad
  "About 6 KB: on the throttled link (64 kbit/s after a 1600-byte burst) a
  commit carrying it takes most of a second, well inside :timeout-ms."
  (apply str (repeat 6000 "p")))

(defn- report [backend mode fault secs e]
  (println (format "network %s %s %s: %s after %.2f s%s" (:name backend) (name mode) (name fault)
                   (if e "failed" "returned") secs
                   (if e (str " (" (if (:duratom/outcome-unknown? (ex-data e)) "outcome unknown" "outcome known")
                              "): " (subs (messages e) 0 (min 160 (count (messages e)))))
                       ""))))

(defn- check-acknowledged
  "Every acknowledged id is in memory and in a fresh read of storage, and
  memory equals storage."
  [dura acked]
  (let [stored (d/backend-snapshot dura)]
    (is (= @dura stored) "memory equals storage")
    (is (every? (:ids stored) acked) (str "every acknowledged commit is stored; missing: "
                                          (remove (:ids stored) acked)))))

(defn- sync-faults
  "A synchronous duratom of `backend` through each fault in turn."
  [backend]
  (let [dura ((:open backend) {:ids #{}} {:commit-mode :sync})
        acked (atom [])
        ack! (fn [id] (swap! dura add-id id) (swap! acked conj id))]
    (try
      (ack! 0)
      (doseq [[i fault] (map-indexed vector [:blackhole :down])]
        (testing (str (:name backend) " sync, link " (name fault) " for longer than :timeout-ms")
          (let [before @dura
                id (- -1 i)
                _ (ts/net-fault! fault)
                [_ e secs] (try (timed #(swap! dura add-id id)) (finally (ts/net-fault! :clear)))]
            (report backend :sync fault secs e)
            (is (some? e) "the swap! fails")
            (is (<= (* 0.9 (/ timeout-ms 1000.0)) secs bound-secs) (str "after the bound, not before; took " secs " s"))
            (is (contains? (ex-data e) :duratom/backend) (messages e))
            (is (true? (:duratom/outcome-unknown? (ex-data e)))
                (str "the commit went out on an open connection and got no answer: " (messages e)))
            (is (or (= before @dura) (= (add-id before id) @dura)) "memory holds the last known state")
            (let [[_ e2] (timed #(ack! (inc i)))]
              (is (nil? e2) (str "the next swap! succeeds without a reopen: " (some-> e2 messages))))
            (check-acknowledged dura @acked))))
      (testing (str (:name backend) " sync, connections reset by the server's host")
        (let [before @dura
              _ (ts/net-fault! :reset)
              [_ e secs] (try (timed #(swap! dura add-id -10)) (finally (ts/net-fault! :clear)))]
          (report backend :sync :reset secs e)
          (is (some? e) "the swap! fails")
          (is (< secs bound-secs) (str "took " secs " s"))
          (is (or (= before @dura) (and (:duratom/outcome-unknown? (ex-data e)) (= (add-id before -10) @dura)))
              "memory holds the last known state")
          (when-not (:duratom/outcome-unknown? (ex-data e))
            (is (not (contains? (:ids (d/backend-snapshot dura)) -10)) "a commit of known failure left no trace"))
          (let [[_ e2] (timed #(ack! 10))]
            (is (nil? e2) (str "the next swap! succeeds without a reopen: " (some-> e2 messages))))
          (check-acknowledged dura @acked)))
      (testing (str (:name backend) " sync, a slow link (every packet waits for the throttle)")
        (ts/net-fault! :slow)
        (let [[_ e secs] (try (timed #(do (swap! dura assoc :pad slow-pad) (ack! 20)))
                              (finally (ts/net-fault! :clear)))]
          (report backend :sync :slow secs e)
          (is (nil? e) (str "commits slower than usual but inside :timeout-ms succeed: " (some-> e messages)))
          (is (>= secs 0.3) (str "the link was slow: " secs " s"))
          (swap! dura dissoc :pad)
          (check-acknowledged dura @acked)))
      (finally (d/destroy dura)))))

(defn- flush-within
  "flush! with a wait of `ms`: [true/false or nil, exception or nil, seconds]."
  [dura ms]
  (timed #(d/flush! dura ms)))

(defn- async-faults
  "An asynchronous duratom of `backend` through each fault in turn: swap!
  returns at once, flush! reports the failure within the bound, and once the
  link is back the kept state lands without a reopen."
  [backend]
  (let [dura ((:open backend) {:ids #{}} {:commit-mode :duratom.core/async})
        acked (atom [])
        ack! (fn [id] (swap! dura add-id id) (is (true? (d/flush! dura 20000))) (swap! acked conj id))]
    (try
      (ack! 0)
      (doseq [[i fault] (map-indexed vector [:blackhole :down :reset])]
        (testing (str (:name backend) " async, link " (name fault))
          (let [id (inc i)
                _ (ts/net-fault! fault)
                [flushed e secs] (try
                                   (let [[_ e0 swap-secs] (timed #(swap! dura add-id id))]
                                     (is (nil? e0) "swap! returns at once")
                                     (is (< swap-secs 0.5) (str "swap! does not wait for the link: " swap-secs " s"))
                                     (flush-within dura (* 2 timeout-ms)))
                                   (finally (ts/net-fault! :clear)))]
            (report backend :async fault secs e)
            (is (not (true? flushed)) "flush! does not claim the state durable while the link is cut")
            (is (< secs (+ bound-secs (* 2 (/ timeout-ms 1000.0)))) (str "flush! came back after " secs " s"))
            (when (and e (#{:blackhole :down} fault))
              (is (true? (:duratom/outcome-unknown? (ex-data e)))
                  (str "the commit went out on an open connection and got no answer: " (messages e))))
            (is (contains? (:ids @dura) id) "memory keeps the swapped state")
            (let [[flushed2 e2] (flush-within dura 20000)]
              (is (true? flushed2) (str "the kept state lands once the link is back, without a reopen: "
                                        (some-> e2 messages))))
            (swap! acked conj id)
            (check-acknowledged dura @acked))))
      (testing (str (:name backend) " async, a slow link")
        (ts/net-fault! :slow)
        (let [[flushed e secs] (try (swap! dura assoc :pad slow-pad)
                                    (flush-within dura 20000)
                                    (finally (ts/net-fault! :clear)))]
          (report backend :async :slow secs e)
          (is (true? flushed) (str "the state lands over the slow link: " (some-> e messages)))
          (is (>= secs 0.3) (str "the link was slow: " secs " s"))
          (swap! dura dissoc :pad)
          (ack! 20)
          (check-acknowledged dura @acked)))
      (finally (d/destroy dura)))))


(defn- holding-back?
  "Whether a socket holds bytes the server has not acknowledged (or a FIN)."
  [[state send-q]]
  (or (pos? send-q) (= "FIN-WAIT-1" state)))

(defn- host-sockets
  "The host's TCP sockets to port `port` of the namespace: [state send-queue
  host-port] each."
  [port]
  (for [line (str/split-lines (ts/sh! "ss" "-tnH" "dst" (str (ts/net-address) ":" port)))
        :let [[state _ send-q local] (str/split (str/trim line) #"\s+")]
        :when local]
    [state (Long/parseLong send-q) (re-find #"\d+$" local)]))

(defn- late-delivery
  "A synchronous commit is held back until it fails as outcome unknown: by a
  blackhole, or, with `new-connections?` (a client that opens a connection
  per request, to a server that answers one at a time), by a hold that lets
  the connection open but keeps its request, then narrowed to that
  connection so that the next commit gets through. The link comes back with
  the connections alive (resume), so TCP delivers the held-back request
  after the next commit was acknowledged. Every commit being conditional,
  the server refuses the late one: the acknowledged state stays."
  [backend & [new-connections?]]
  (let [port ((:port backend))
        dura ((:open backend) {:ids #{}} {:commit-mode :sync})]
    (try
      (swap! dura add-id 0)
      (if new-connections? (ts/net-fault! :hold port) (ts/net-fault! :blackhole))
      (let [e (try (swap! dura add-id -1) nil (catch Exception e e))
            held (filter holding-back? (host-sockets port))]
        (is (true? (:duratom/outcome-unknown? (ex-data e))) (str "the held-back commit: " (some-> e messages)))
        (is (seq held) "the request is held back on the host, to be delivered late")
        (try
          (if new-connections?
            ;; the connection holding the request's bytes (others may wait
            ;; on a FIN alone)
            (let [request (filter #(> (second %) 1) held)]
              (is (= 1 (count request)) (str "one request held: " (pr-str held)))
              (ts/net-fault! :hold port (nth (first request) 2)))
            (ts/net-fault! :resume))
          (let [[_ e2] (timed #(swap! dura add-id 1))]
            (is (nil? e2) (str "the next commit is acknowledged: " (some-> e2 messages))))
          (finally (ts/net-fault! :resume)))
        ;; The late request is handled once the server has closed that
        ;; connection after reading it: no socket of the host still holds
        ;; bytes or waits for the server's FIN.
        (let [deadline (+ (System/nanoTime) 30e9)]
          (while (and (some #(or (holding-back? %) (= "FIN-WAIT-2" (first %))) (host-sockets port))
                      (< (System/nanoTime) deadline))
            (Thread/yield)))
        (is (not-any? #(or (holding-back? %) (= "FIN-WAIT-2" (first %))) (host-sockets port))
            "the server received the late request and closed its connection")
        (check-acknowledged dura [0 1])
        (is (contains? (:ids @dura) 1)))
      (finally (d/destroy dura)))))

;; PostgreSQL and Redis: their request waits in the kept connection. S3: the
;; test server closes each connection after its answer, so every request
;; opens a connection (a blackhole would stop it at the SYN, before any
;; request went out) and the hold lets the connection open.
(deftest postgres-request-delivered-late-never-replaces-an-acknowledged-commit
  (late-delivery (:postgres backends)))

(deftest s3-request-delivered-late-never-replaces-an-acknowledged-commit
  (late-delivery (:s3 backends) true))

(deftest redis-request-delivered-late-never-replaces-an-acknowledged-commit
  (late-delivery (:redis backends)))

(deftest postgres-sync-through-network-faults
  (sync-faults (:postgres backends)))

(deftest postgres-async-through-network-faults
  (async-faults (:postgres backends)))

(deftest s3-sync-through-network-faults
  (sync-faults (:s3 backends)))

(deftest s3-async-through-network-faults
  (async-faults (:s3 backends)))

(deftest redis-sync-through-network-faults
  (sync-faults (:redis backends)))

(deftest redis-async-through-network-faults
  (async-faults (:redis backends)))
