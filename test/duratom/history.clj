(ns duratom.history
  "A history checker for the commit engine's promises.

  Many threads run random operations on one duratom while faults are
  injected from outside (the directory moved away and back, the PostgreSQL
  or Redis server stopped and started, the network link to the server cut by
  the kernel, threads interrupted); in log mode, compactions run among the
  operations. Every operation records
  when it started and ended (System/nanoTime) and whether it returned (with
  what) or threw (with what). A watch records every transition. At the end a
  reopen reads storage, and `check` looks for broken promises.

  The state is `{:n count :ids #{[p t op] ...} :last [kind p t op]}`. Every
  mutation that takes effect adds exactly one id (process p, thread t,
  operation number op), increments `:n` and names itself in `:last`, so every
  state is unique and names the transition that made it, and `:n` always
  equals the size of `:ids`.

  `reset!` replaces the whole state, so a reset! computed from a stale
  snapshot would legitimately discard swaps that returned (that is atom
  semantics, not a lost update) and the id checks would mean nothing. So the
  driver resets to a value derived from the newest state: it holds the
  duratom's own `:lock` (a ReentrantLock we supply; swap! takes it
  reentrantly), which stops any other mutation from being accepted, and in
  synchronous mode first `flush!`es, so that nothing accepted is still
  pending and `deref` (the newest durable state) is the newest state. If that
  flush! does not succeed the reset! is not attempted (outcome :skipped). In
  shared mode another process may commit at any time, so reset! would
  overwrite its returned swaps; shared mode leaves reset! out (and uses
  compare-and-set!, which fails rather than overwrite).

  Seeds choose the operations, their pacing and the fault timings; threads
  and faults still race for real, so a seed reproduces the workload, not the
  exact interleaving."
  (:require [clojure.edn :as edn]
            [clojure.java.io :as io]
            [clojure.set :as set]
            [clojure.string :as str]
            [duratom.core :as d]
            [duratom.test-support :as ts])
  (:import (java.io File)
           (java.util Random)
           (java.util.concurrent ConcurrentLinkedQueue TimeUnit)
           (java.util.concurrent.locks LockSupport ReentrantLock)))

(set! *warn-on-reflection* true)

(def init-value {:n 0 :ids #{} :last nil})

(def mutating #{:swap :swap-vals :reset :cas})

;; ------------------------------------------------------------------ config

(defn env-long [k default]
  (if-let [s (not-empty (System/getenv k))] (Long/parseLong s) default))

(defn settings
  "Run settings, from the environment where given:
  DURATOM_HISTORY_SECS  seconds of operations per seed run (default 15);
  DURATOM_HISTORY_SEED  replay only this seed;
  DURATOM_HISTORY_THREADS  worker threads per process (default: the test's
    choice, else 6);
  DURATOM_HISTORY_FAULTS  all (storage, refusal, network and interrupts:
    PostgreSQL's and Redis's), none, or a list of storage, refusal, network,
    wal (SQLite), interrupts (default: the test's choice);
  DURATOM_HISTORY_WITHOUT  operation kinds to leave out, e.g. refresh,reset;
  DURATOM_HISTORY_OPS_PER_SEC  the most operations a thread runs per second (default 100)."
  []
  {:secs (env-long "DURATOM_HISTORY_SECS" 15)
   :threads (env-long "DURATOM_HISTORY_THREADS" nil)
   ;; which faults to inject (to triage a violation)
   :faults (when-let [f (not-empty (System/getenv "DURATOM_HISTORY_FAULTS"))]
             (if (= f "none")
               #{}
               (set (mapcat #(if (= % "all") [:storage :refusal :network :interrupts] [(keyword %)])
                            (str/split f #",")))))
   ;; operation kinds to leave out, e.g. "refresh,reset" (to triage a violation)
   :without (when-let [w (System/getenv "DURATOM_HISTORY_WITHOUT")]
              (set (map keyword (remove empty? (str/split w #",")))))
   :replay-seed (when-let [s (not-empty (System/getenv "DURATOM_HISTORY_SEED"))] (Long/parseLong s))})

(defn seeds
  "The seeds to run: `fixed` plus one random seed, or only the replay seed."
  [fixed]
  (if-let [s (:replay-seed (settings))]
    [s]
    [fixed (.nextLong (Random.))]))

;; ---------------------------------------------------------------- opening

(defn open
  "A duratom at `loc` ({:backend :file :path ..}, {:backend :pg :db-spec ..
  :table ..}, {:backend :s3 :creds .. :bucket .. :key ..}, {:backend :redis
  :conn .. :key ..} or {:backend :sqlite :path .. :table ..}) with `lock`,
  `init` and `rw`."
  [loc ^ReentrantLock lock init rw]
  (case (:backend loc)
    :file (d/file-atom (:path loc) lock init rw)
    :pg (d/postgres-atom (:db-spec loc) (:table loc) 0 lock init rw)
    :s3 (d/s3-atom (:creds loc) (:bucket loc) (:key loc) lock init rw)
    :redis (d/redis-atom (:conn loc) (:key loc) lock init rw)
    :sqlite (d/sqlite-atom {:dbtype "sqlite" :dbname (:path loc)} (:table loc) 0 lock init rw)))

(defn rw-for
  "The :rw of commit mode `mode`; `log?`: in log mode (records appended
  after a base, see duratom.log)."
  ([mode] (rw-for mode false))
  ([mode log?]
   (cond-> (case mode
             :sync {:commit-mode :sync}
             :async {:commit-mode :duratom.core/async}
             :shared {:shared? true})
     log? (assoc :log? true))))

;; ---------------------------------------------------------------- the driver

(defn- tagged
  "`v` after the mutation `kind` by [p t op]."
  [v kind p t op]
  (-> v
      (update :n inc)
      (update :ids conj [p t op])
      (assoc :last [kind p t op])))

(defn- tag-id [tag] (when tag (subvec tag 1)))

(defn summary
  "What the checker needs of a state (keeps records small and cross-process)."
  [v]
  {:last (:last v) :n (:n v) :c (count (:ids v))
   :has-own (contains? (:ids v) (tag-id (:last v)))})

(defn- pause
  "Spreads a thread's operations over the run (pacing, not synchronisation)."
  [^Random rnd ^long mean-nanos]
  (when (pos? mean-nanos)
    (LockSupport/parkNanos (long (* 2 mean-nanos (.nextDouble rnd))))))

(defn- pick-op [^Random rnd mode log? without]
  (let [x (.nextInt rnd 100)
        kind (cond (< x 45) :swap
                   (< x 52) :swap-vals
                   (< x 60) (if (= mode :shared) :swap :reset)
                   (< x 72) :cas
                   (< x 82) :flush
                   (< x 92) :refresh
                   (and log? (< x 96)) :compact
                   :else :deref)]
    (if (contains? without kind) :deref kind)))

(defn- run-op
  "Runs operation `kind` number `op` of thread [p t]; returns what it
  returned, as recorded in the history."
  [dura ^ReentrantLock lock mode kind p t op]
  (case kind
    :swap {:ret (:last (swap! dura tagged :swap p t op))}
    :swap-vals (let [[o n] (swap-vals! dura tagged :swap-vals p t op)]
                 {:ret (:last n) :old (:last o)})
    :reset (do (.lock lock)
               (try
                 (let [flushed (if (= mode :sync) (d/flush! dura 2000) true)]
                   ;; sync: refresh! adopts a landed write of unknown outcome
                   ;; now, so the reset! builds on it rather than discard it;
                   ;; if storage cannot be read, reset! meets the same fault
                   (when (and flushed (= mode :sync))
                     (try (d/refresh! dura) (catch Exception _ nil)))
                   (if flushed
                     {:ret (:last (reset! dura (tagged @dura :reset p t op)))}
                     {:skipped "flush! timed out: reset! not attempted"}))
                 (finally (.unlock lock))))
    :cas (let [cur @dura]
           {:ret (compare-and-set! dura cur (tagged cur :cas p t op))})
    :flush {:ret (d/flush! dura 2000)}
    ;; returns the records the compaction folds in (those counted before it)
    :compact (let [records (:log-records (d/stats dura))]
               (d/compact! dura)
               {:ret records})
    :refresh {:ret (:last (d/refresh! dura))}
    :deref {:ret (:last @dura)}))

(defn worker
  "Runs random operations until `deadline` (nanoTime) or `max-ops`; returns
  the history of thread [p t]."
  [dura lock mode log? without p t ^Random rnd deadline max-ops mean-nanos op0]
  (loop [op op0 hist (transient [])]
    (if (or (>= (- op op0) max-ops) (>= (System/nanoTime) deadline))
      (persistent! hist)
      (let [kind (pick-op rnd mode log? without)
            _ (pause rnd mean-nanos)
            _ (Thread/interrupted) ; an interrupt meant for the last op must not hit this one's start
            start (System/nanoTime)
            rec (try (let [r (run-op dura lock mode kind p t op)]
                       (if (contains? r :skipped)
                         (assoc r :outcome :skipped)
                         (assoc r :outcome :ok)))
                     (catch Throwable x
                       {:outcome :threw
                        :ex [(.getName (class x)) (ex-message x)]
                        :ex-causes (mapv #(.getName (class %)) (take 4 (take-while some? (iterate ex-cause (ex-cause x)))))}))
            end (System/nanoTime)
            interrupted (Thread/interrupted)]
        (recur (inc op)
               (conj! hist (assoc rec :p p :t t :op op :kind kind :start start :end end
                                  :interrupted-after interrupted))
               )))))

(defn- watch-recorder
  "A watch fn that appends a summary of every transition to `q`, with the
  ids it added when it added more than one (a reload, or a landed write of
  unknown outcome adopted)."
  [^ConcurrentLinkedQueue q]
  (fn [_ _ old new]
    (.add q (cond-> {:th (.getName (Thread/currentThread)) :at (System/nanoTime)
                     :o (summary old) :n (summary new)}
              (not= (long (or (:n new) 0)) (inc (long (or (:n old) 0))))
              (assoc :added (set/difference (:ids new) (:ids old))
                     :removed (set/difference (:ids old) (:ids new)))))))

(defn interrupter
  "Interrupts a random one of `threads` every few milliseconds until `stop?`;
  returns the count."
  [threads ^Random rnd stop?]
  (loop [n 0]
    (if (stop?)
      n
      (do (LockSupport/parkNanos (* 1000000 (+ 1 (.nextInt rnd 15))))
          (let [^Thread th (nth threads (.nextInt rnd (count threads)))]
            (.interrupt th))
          (recur (inc n))))))

(defn run-threads
  "Runs `n` workers of process `p` on `dura` for `secs` while interrupting
  them at random. Returns {:history [...] :interrupts n :hung [..]}."
  [dura lock {:keys [mode log? faults without]} p n secs seed max-ops op0]
  (let [deadline (+ (System/nanoTime) (long (* secs 1e9)))
        mean (long (/ (* secs 1e9) (max 1 max-ops)))
        results (object-array n)
        threads (vec (for [t (range n)]
                       (Thread. ^Runnable
                                (fn []
                                  (aset results t
                                        (try (worker dura lock mode log? without p t (Random. (+ seed (* 7919 (inc t)) (* 104729 p)))
                                                     deadline max-ops (quot mean 2) op0)
                                             (catch Throwable x [{:driver-error (str x " at " (first (.getStackTrace x)))}]))))
                                (str "history-" p "-" t))))
        stop (volatile! false)
        intr (future (if (:interrupts faults)
                       (interrupter threads (Random. (+ seed 31 p)) #(deref stop))
                       0))]
    (run! #(.start ^Thread %) threads)
    (let [hung (vec (for [^Thread th threads
                          :when (do (.join th (long (+ (* secs 1000) 120000))) (.isAlive th))]
                      {:thread (.getName th)
                       :stack (mapv str (.getStackTrace th))}))]
      (vreset! stop true)
      (let [interrupts @intr]
        (Thread/interrupted)
        {:history (vec (mapcat seq (remove nil? results)))
         :interrupts interrupts
         :hung hung}))))

;; ----------------------------------------------------------------- faults

(defn- rename! [^File from ^File to]
  (when-not (.renameTo from to)
    (throw (ex-info (str "history: could not move " from " to " to) {}))))

(defn dir-faults
  "Moves the directory of `path` away and back (a missing directory stops
  every commit, even for root). Returns [break! mend!]."
  [path]
  (let [dir (.getParentFile (io/file path))
        away (File. (str dir ".away"))]
    [#(rename! dir away) #(rename! away dir)]))

(defn server-faults
  "Stops and starts the server of `loc` with `script` (scripts/postgres-server
  or scripts/redis-server, given its :server-dir). Returns [break! mend!]."
  [script {dir :server-dir}]
  [#(ts/sh! script "stop" dir)
   #(ts/sh! script "start" dir)])

(defn- psql!
  "Runs `sql` on the server of `db-spec` with psql, as its user."
  [{:keys [host port dbname user password]} sql]
  (ts/sh! "env" (str "PGPASSWORD=" password) "psql" "-X" "-q" "-v" "ON_ERROR_STOP=1"
          "-h" (str host) "-p" (str port) "-U" user "-d" dbname "-c" sql))

(defn pg-refusals
  "Takes the right to write the table away from its user and gives it back:
  every commit is then refused by the server, with no doubt about its
  outcome. Returns [break! mend!]."
  [{:keys [db-spec table]}]
  (let [t (str "\"" table "\"")]
    [#(psql! db-spec (str "REVOKE UPDATE, INSERT ON " t " FROM " (:user db-spec)))
     #(psql! db-spec (str "GRANT UPDATE, INSERT ON " t " TO " (:user db-spec)))]))

(defn redis-refusals
  "Takes every write command away from the Redis user and gives them back
  (ACL): every commit is then refused by the server, with no doubt about
  its outcome. Returns [break! mend!]."
  [{{{:keys [host port password]} :spec} :conn}]
  (let [acl! (fn [rule] (ts/sh! "redis-cli" "--no-auth-warning" "-h" (str host) "-p" (str port) "-a" password
                                "ACL" "SETUSER" "default" rule))]
    [#(acl! "-@write") #(acl! "+@all")]))

(defn wal-removal
  "Removes the WAL file of the SQLite database at `path` (a clean-up script's
  `rm *-wal`); nothing to mend: the next call notices. Returns [break! mend!]."
  [path]
  [#(io/delete-file (str path "-wal") true) (constantly nil)])

(def network-faults
  "The network faults, taken in turn: the link dropping every packet, down,
  or resetting every connection (scripts/netns). Mending ends the server
  side of connections that were open across a blackhole or the link down,
  as a long outage does."
  [:blackhole :down :reset])

(defn net-faults
  "Cuts the link to the network namespace (whose servers the locations of
  the :network fault use) with the `i`th of network-faults, and mends it.
  Returns [break! mend!]."
  [i]
  [#(ts/net-fault! (nth network-faults (mod i (count network-faults))))
   #(ts/net-fault! :clear)])

(defn faults-for
  "[break! mend! up-ms down-ms] for fault `kind` (:storage: the directory of
  the file or SQLite database moved away, the PostgreSQL or Redis server
  stopped; :refusal: the PostgreSQL table's write privilege or the Redis
  user's write commands revoked; :network: the link
  cut, see net-faults, `i` choosing how; :wal: the SQLite WAL file removed)
  on the backend of `loc`."
  [loc kind i]
  (case [(:backend loc) kind]
    ([:file :storage] [:sqlite :storage]) (conj (dir-faults (:path loc)) [20 300] [5 150])
    [:pg :storage] (conj (server-faults "scripts/postgres-server" loc) [1000 2000] [100 700])
    [:redis :storage] (conj (server-faults "scripts/redis-server" loc) [1000 2000] [100 700])
    [:pg :refusal] (conj (pg-refusals loc) [100 400] [20 200])
    [:redis :refusal] (conj (redis-refusals loc) [100 400] [20 200])
    [:sqlite :wal] (conj (wal-removal (:path loc)) [100 400] [0 1])
    ([:pg :network] [:s3 :network] [:redis :network]) (conj (net-faults i) [300 900] [200 1300])))

(defn- park-ms [^Random rnd [from spread]]
  (LockSupport/parkNanos (* 1000000 (+ (long from) (.nextInt rnd (int spread))))))

(def storage-fault-kinds
  "The faults start-faults injects, as named in a run's :faults."
  [:storage :refusal :network :wal])

(defn start-faults
  "Starts injecting the faults among `faults` of storage-fault-kinds for
  `loc`, one at a time, the kinds taken in turn (so each comes up once a
  run has room for a round), until stopped; returns a fn that stops them,
  leaves things mended, and returns the count of each kind injected, e.g.
  {:storage 3 :network 2}."
  [loc faults ^long seed]
  (let [kinds (vec (filter faults storage-fault-kinds))]
    (if (empty? kinds)
      (constantly {})
      (let [_ (run! #(faults-for loc % 0) kinds) ; a missing server setting fails here, saying so
            stop (volatile! false)
            rnd (Random. (+ seed 17))
            f (future
                (loop [n 0 counts (zipmap kinds (repeat 0))]
                  (let [kind (nth kinds (mod n (count kinds)))
                        [break! mend! up down] (faults-for loc kind (get counts kind))]
                    (park-ms rnd up)
                    (if @stop
                      counts
                      (do (break!)
                          (try (park-ms rnd down) (finally (mend!)))
                          (recur (inc n) (update counts kind inc)))))))]
        (fn [] (vreset! stop true) @f)))))

;; --------------------------------------------------------------- finishing

(defn flush-until-durable!
  "flush! until it succeeds (faults are over; a writer may still be backing
  off); gives up after `secs`. Returns nil or the last error."
  [dura secs]
  (let [deadline (+ (System/nanoTime) (long (* secs 1e9)))]
    (loop []
      (let [r (try (if (d/flush! dura 5000) nil :timeout) (catch Throwable x x))]
        (if (and r (< (System/nanoTime) deadline))
          (recur)
          r)))))

(defn refresh-until-read
  "refresh! until storage answers (a PostgreSQL server just restarted)."
  [dura secs]
  (let [deadline (+ (System/nanoTime) (long (* secs 1e9)))]
    (loop []
      (let [r (try {:value (d/refresh! dura)} (catch Throwable x {:error x}))]
        (if (and (:error r) (< (System/nanoTime) deadline))
          (recur)
          r)))))

(defn reopen-read
  "The stored value, read by a new duratom opened on `loc` (retried while the
  server comes back); `log?`: opened in log mode."
  [loc secs & [log?]]
  (let [deadline (+ (System/nanoTime) (long (* secs 1e9)))]
    (loop []
      (let [r (try {:value @(open loc (ReentrantLock.) nil (rw-for :sync log?))}
                   (catch Throwable x {:error x}))]
        (if (and (:error r) (< (System/nanoTime) deadline))
          (recur)
          r)))))

;; ------------------------------------------------------------------ checks

(defn- op-id [r] [(:p r) (:t r) (:op r)])

(defn- excerpt
  "The history around op `r`: what its thread did just before and after."
  [history r]
  (let [same (filter #(and (= (:p %) (:p r)) (= (:t %) (:t r))
                           (<= (- (:op r) 3) (:op %) (+ (:op r) 1)))
                     history)]
    (mapv #(select-keys % [:p :t :op :kind :outcome :ret :ex :interrupted-after :start :end]) same)))

(defn took-effect?
  "Whether op record `r` must be in the state: a mutation that returned
  (compare-and-set! only when it returned true)."
  [r]
  (and (mutating (:kind r)) (= :ok (:outcome r))
       (or (not= :cas (:kind r)) (true? (:ret r)))))

(defn outcome-unknown?
  "Whether op record `r` threw an error saying that its commit's outcome is
  unknown (the request went out and no answer came). The contract lets such a
  state land (the duratom then adopts it), so it is checked neither way."
  [r]
  (and (= :threw (:outcome r))
       (boolean (re-find #"(?i)outcome unknown|outcome is unknown|may or may not have taken effect"
                         (str (second (:ex r)))))))

(defn unknown-ids
  "The ids of the mutations in `history` told that their outcome is unknown."
  [history]
  (set (map op-id (filter outcome-unknown? history))))

(defn unknown-write-landed?
  "Whether `stored` differs from `memory` only by the last write, whose
  outcome its callers were told is unknown (one swap's, or a group's that
  one commit carried): allowed until the next commit or refresh! checks
  storage (doc/durability.md, \"Outcome unknown\")."
  [history stored memory]
  (let [added (set/difference (set (:ids stored)) (set (:ids memory)))
        unknown (unknown-ids history)]
    (boolean (and (seq added) (every? unknown added)
                  (contains? added (some-> (:last stored) (subvec 1)))
                  (= (:n stored) (+ (:n memory) (count added)))
                  (set/subset? (set (:ids memory)) (set (:ids stored)))))))

(defn left-no-trace?
  "Whether op record `r` must be absent from the state: a mutation that
  threw (with a known outcome), was skipped, or a compare-and-set! that
  returned false."
  [r]
  (and (mutating (:kind r))
       (or (= :skipped (:outcome r))
           (and (= :threw (:outcome r)) (not (outcome-unknown? r)))
           (and (= :cas (:kind r)) (= :ok (:outcome r)) (false? (:ret r))))))

(defn check-ids
  "Ids of ops that took effect must be in `state`'s ids, ids of ops that
  left no trace must not. `what` names the state (storage, memory)."
  [history state what]
  (let [ids (:ids state)]
    (concat
     (for [r history :when (and (took-effect? r) (not (contains? ids (op-id r))))]
       {:check (str "a mutation that returned is in " what)
        :op (op-id r) :record (dissoc r :p :t :op) :excerpt (excerpt history r)})
     (for [r history :when (and (left-no-trace? r) (contains? ids (op-id r)))]
       {:check (str "a mutation that threw (or a failed compare-and-set!) left no trace in " what)
        :op (op-id r) :record (dissoc r :p :t :op) :excerpt (excerpt history r)}))))

(defn check-chain
  "The watch calls of one process form one sequence: starting at `start`
  (the :last of the state the process began with), every call's old is the
  previous call's new. Every state keeps :n = (count :ids) and holds its own
  id; a local transition adds exactly one, or, when it adopts a landed write
  of unknown outcome (one commit for a group of swaps), the ids of swaps all
  told their outcome is unknown (`unknown`). Returns {:violations .. :pos
  {tag index}} where :pos orders the states reached."
  [watches start p unknown]
  (let [by-old (group-by (comp :last :o) watches)
        branches (for [[o ws] by-old :when (> (count ws) 1)]
                   {:check "watch calls form one sequence (no state has two successors)"
                    :old o :news (mapv (comp :last :n) ws)})
        [pos seen] (loop [tag start i 0 pos {} seen 0]
                     (let [ws (get by-old tag)]
                       (if (and (seq ws) (not (contains? pos (:last (:n (first ws))))))
                         (let [nt (:last (:n (first ws)))]
                           (recur nt (inc i) (assoc pos nt i) (inc seen)))
                         [pos seen])))
        unreached (when (< seen (count watches))
                    [{:check "watch calls form one sequence (every call's old is the previous call's new)"
                      :reached seen :calls (count watches)
                      :first-unreached (take 3 (for [w watches :when (not (contains? pos (:last (:n w))))]
                                                 (select-keys w [:th :o :n])))}])
        shape (for [w watches
                    :let [{:keys [o n]} w
                          local? (= p (second (:last n)))
                          adopted? (and (seq (:added w)) (empty? (:removed w))
                                        (= (count (:added w)) (- (:n n) (:n o)))
                                        (every? unknown (:added w)))
                          ;; a sync reset! replaces what it finds: a landed write of
                          ;; unknown outcome adopted between the driver's refresh!
                          ;; and its reset! is adopted, then replaced
                          reset-over-landed? (and (= :reset (first (:last n)))
                                                  (= (:added w) #{(tag-id (:last n))})
                                                  (seq (:removed w)) (every? unknown (:removed w)))]
                    :when (or (not= (:n o) (:c o)) (not= (:n n) (:c n)) (not (:has-own n))
                              (and local? (not adopted?) (not reset-over-landed?)
                                   (or (not= (:n n) (inc (:n o))) (not= (:c n) (inc (:c o)))))
                              (and (not local?) (<= (:n n) (:n o))))]
                {:check "each watched state adds exactly its own id to the one before" :watch w})]
    {:violations (concat branches unreached shape) :pos pos}))

(defn check-order
  "Every mutation that took effect appears in the watch sequence, and in
  real-time order: if A returned before B started, A comes before B."
  [history pos]
  (let [effective (filter took-effect? history)
        tag-of (fn [r] (if (= :cas (:kind r)) [:cas (:p r) (:t r) (:op r)] (:ret r)))
        missing (for [r effective :when (not (contains? pos (tag-of r)))]
                  {:check "every returned mutation's new value was seen by the watches"
                   :op (op-id r) :record (dissoc r :p :t :op) :excerpt (excerpt history r)})
        placed (->> effective
                    (keep #(when-let [i (get pos (tag-of %))] (assoc % :pos i)))
                    (sort-by :end)
                    vec)
        ends (long-array (map :end placed))
        prefix-max (long-array (reductions max -1 (map :pos placed)))
        before (fn [^long start]
                 ;; count of placed ops that ended before `start`
                 (let [i (java.util.Arrays/binarySearch ends start)]
                   (if (neg? i) (- (inc i)) i)))
        misordered (for [b placed
                         :let [k (before (:start b))
                               m (aget prefix-max k)]
                         :when (>= m (:pos b))]
                     {:check "real-time order: a mutation that returned before another began comes first"
                      :op (op-id b) :pos (:pos b) :an-earlier-op-has-pos m
                      :earlier (first (for [a placed :when (and (< (:end a) (:start b)) (>= (:pos a) (:pos b)))]
                                        (op-id a)))})]
    (concat missing misordered)))

(defn check-destroy
  "After destroy returned, every mutation threw IllegalStateException."
  [history destroy-end]
  (for [r history
        :when (and (mutating (:kind r)) (> (:start r) destroy-end)
                   (not (and (= :threw (:outcome r)) (= "java.lang.IllegalStateException" (first (:ex r))))))]
    {:check "a mutation after destroy throws IllegalStateException" :op (op-id r) :record (dissoc r :p :t :op) :excerpt (excerpt history r)}))

(defn check-driver
  "The driver itself must not fail: such a run checks nothing."
  [history]
  (for [r history :when (:driver-error r)]
    {:check "the driver ran without error" :error (:driver-error r)}))

(defn tally
  "Counts of ops by kind and outcome."
  [history]
  (frequencies (map (juxt :kind #(if (outcome-unknown? %) :outcome-unknown (:outcome %))) history)))

(defn fault-phase
  "What ran while faults were injected: {:ops n :returned n}, the second the
  mutations that took effect."
  [history]
  {:ops (count history) :returned (count (filter took-effect? history))})

(defn compactions
  "Log mode: `{:ran n :records n}`, the compact! calls that returned and the
  change records they folded in (as stats counted them just before)."
  [history]
  (let [rs (filter #(and (= :compact (:kind %)) (= :ok (:outcome %))) history)]
    {:ran (count rs) :records (reduce + (keep :ret rs))}))

(defn errors
  "Counts of what the ops that threw threw (class and the start of the message)."
  [history]
  (frequencies (for [r history :when (= :threw (:outcome r))]
                 (let [[c m] (:ex r)] (str c ": " (subs (str m) 0 (min 60 (count (str m)))))))))

;; -------------------------------------------------------------- one process

(def ^:private destroy-phase-secs 1.5)

(defn- max-ops-per-thread [secs]
  (long (* secs (env-long "DURATOM_HISTORY_OPS_PER_SEC" 100))))

(defn- exception-summary [^Throwable x]
  (when x [(.getName (class x)) (ex-message x)]))

(defn run-local
  "One run of the checker in one JVM, `mode` :sync or :async, at `loc`.
  Phase 1: `secs` of random operations with faults and interrupts; then
  faults stop, a final flush!, and a reopen reads storage. Phase 2: operations
  go on (interrupts only) and the duratom is destroyed at a random moment.
  Returns a report with :violations."
  [{:keys [loc mode log? seed secs threads faults] :as opts}]
  (let [rnd (Random. seed)
        lock (ReentrantLock.)
        dura (open loc lock init-value (rw-for mode log?))
        q (ConcurrentLinkedQueue.)
        _ (add-watch dura :history (watch-recorder q))
        max-ops (max-ops-per-thread secs)
        t0 (System/nanoTime)
        [r1 fault-counts] (let [stop-faults (start-faults loc faults seed)
                          r (try (run-threads dura lock opts 0 threads secs seed max-ops 0)
                                 (catch Throwable x (stop-faults) (throw x)))]
                      [r (stop-faults)])]
    (if (seq (:hung r1))
      {:violations [{:check "no operation hangs" :hung (:hung r1)}]
       :ops (count (:history r1)) :faults fault-counts :interrupts (:interrupts r1)}
      (let [flush-error (flush-until-durable! dura 60)
            memory @dura
            stored (reopen-read loc 60 log?)
            h1 (:history r1)
            v1 (concat
                (when flush-error
                  [{:check "a final flush! succeeds once faults are over" :error (exception-summary flush-error)}])
                (when (:error stored)
                  [{:check "a reopen reads storage" :error (exception-summary (:error stored))}])
                (when (and (not (:error stored)) (not= (:value stored) memory)
                           (not (unknown-write-landed? h1 (:value stored) memory)))
                  [{:check "storage equals memory after a final flush!"
                    :stored (summary (:value stored)) :memory (summary memory)}])
                (when-not (:error stored) (check-ids h1 (:value stored) "storage"))
                (check-ids h1 memory "memory"))
            ;; phase 2: destroy while operations run
            destroy-at (+ 0.3 (* 0.7 (.nextDouble rnd)))
            destroyed (future
                        (LockSupport/parkNanos (long (* destroy-at 1e9)))
                        (let [s (System/nanoTime)
                              r (try (d/destroy dura) :ok (catch Throwable x (exception-summary x)))]
                          {:start s :end (System/nanoTime) :outcome r}))
            r2 (run-threads dura lock (update opts :faults disj :storage) 0 threads destroy-phase-secs (+ seed 1) (max-ops-per-thread destroy-phase-secs)
                            1000000)
            {destroy-end :end destroy-outcome :outcome} @destroyed
            history (into h1 (:history r2))
            after @dura
            watches (vec q)
            {chain-violations :violations pos :pos} (check-chain watches nil 0 (unknown-ids history))
            last-tag (when (seq pos) (key (apply max-key val pos)))
            gone (reopen-read loc 30 log?)
            v2 (concat
                (when (seq (:hung r2)) [{:check "no operation hangs" :hung (:hung r2)}])
                (check-driver history)
                (when (not= :ok destroy-outcome) [{:check "destroy succeeds" :error destroy-outcome}])
                (check-ids history after "memory after destroy")
                chain-violations
                (check-order history pos)
                (check-destroy history destroy-end)
                (when (not= last-tag (:last after))
                  [{:check "deref after destroy gives the last state the watches saw"
                    :deref (:last after) :last-watched last-tag}])
                (when-not (and (nil? (:error gone)) (nil? (:value gone)))
                  [{:check "destroy removed what was stored"
                    :reopened (if (:error gone) (exception-summary (:error gone)) (summary (:value gone)))}]))]
        {:violations (vec (concat v1 v2))
         :ops (count history)
         :fault-phase (fault-phase h1)
         :tally (tally history)
         :compactions (compactions history)
         :errors (errors history)
         :watches (count watches)
         :faults fault-counts
         :interrupts (+ (:interrupts r1) (:interrupts r2))
         :secs (/ (- (System/nanoTime) t0) 1e9)}))))

;; ------------------------------------------------------- shared: 3 processes

(defn- open-retrying
  "Opens the shared duratom at `loc`, retrying while the server is down.
  The pause is a retry back-off while another process restarts the server
  (nothing in this JVM can signal that), not a wait for a commit."
  [loc lock log?]
  (loop [tries 0]
    (let [r (try (open loc lock nil (rw-for :shared log?))
                 (catch Throwable x (if (< tries 100) ::retry (throw x))))]
      (if (= ::retry r) (do (Thread/sleep 200) (recur (inc tries))) r))))

(defn child-main
  "Run in each child JVM of `run-shared`, once per run in `:runs` (each
  {:loc :seed :out}): opens the shared duratom, says `ready`, waits for
  `start`, runs its threads, says `ran`, waits for `go` (the faults are
  over), refresh!es and writes its history, watches and final state as EDN to
  the run's `:out`, says `done`."
  [opts-edn]
  (let [{:keys [runs p secs threads max-ops log?] :as opts} (edn/read-string opts-edn)
        say (fn [s] (println s) (flush))]
    (doseq [{:keys [loc seed out]} runs]
      (let [lock (ReentrantLock.)
            dura (open-retrying loc lock log?)
            q (ConcurrentLinkedQueue.)
            _ (add-watch dura :history (watch-recorder q))
            start (:last @dura)]
        (say "ready")
        (read-line)
        (let [r (run-threads dura lock opts p threads secs (+ seed p) max-ops 0)]
          (say "ran")
          (read-line)
          (let [refreshed (refresh-until-read dura 60)]
            (spit out (pr-str {:history (:history r) :hung (:hung r) :interrupts (:interrupts r)
                               :watches (vec q) :start start
                               :final (:value refreshed)
                               :refresh-error (some-> (:error refreshed) exception-summary)}))
            (say "done")))))))

(defn- read-line-within
  "The next line of `r`, or :timeout after `secs`."
  [^java.io.BufferedReader r secs]
  (deref (future (.readLine r)) (long (* 1000 secs)) :timeout))

(defn- check-shared-run
  "Checks the results of the children of one shared run against `stored`."
  [results stored]
  (let [sv (:value stored)
        history (vec (mapcat :history results))
        unknown (unknown-ids history)]
    (vec (concat
          (when (:error stored)
            [{:check "a reopen reads storage" :error (exception-summary (:error stored))}])
          (check-driver history)
          (check-ids history sv "storage")
          (mapcat (fn [{:keys [history watches start final refresh-error hung]}]
                    (let [p (:p (first history))
                          {cv :violations pos :pos} (check-chain watches start p unknown)]
                      (concat
                       (when (seq hung) [{:check "no operation hangs" :hung hung}])
                       (when refresh-error [{:check "a final refresh! reads storage" :p p :error refresh-error}])
                       (when (not= final sv)
                         [{:check "storage equals each process's memory after a final refresh!"
                           :p p :stored (summary sv) :memory (summary final)}])
                       (check-ids history final (str "the memory of process " p))
                       cv
                       (check-order history pos))))
                  results)))))

(defn- destroy-checks
  "Destroys `parent`: afterwards a mutation throws IllegalStateException,
  deref keeps the last value and a reopen of `loc` finds nothing. The
  parent refresh!es first: it was idle while the faults ran, and the next
  call may report one (a removed SQLite WAL is reported so)."
  [parent loc log?]
  (let [refreshed (refresh-until-read parent 60)
        last-value @parent
        destroy-error (try (d/destroy parent) nil (catch Throwable x x))
        after (try (swap! parent tagged :swap 0 0 0) :returned
                   (catch IllegalStateException _ :threw))
        gone (reopen-read loc 30 log?)]
    (cond-> []
      (:error refreshed) (conj {:check "a final refresh! reads storage" :p 0
                                :error (exception-summary (:error refreshed))})
      destroy-error (conj {:check "destroy succeeds" :error (exception-summary destroy-error)})
      (not= :threw after) (conj {:check "a mutation after destroy throws IllegalStateException"})
      (not= last-value @parent) (conj {:check "deref after destroy gives the last value"})
      (some? (:value gone)) (conj {:check "destroy removed what was stored"}))))

(defn run-shared
  "Runs the checker with 3 child JVMs on one shared duratom, once per seed
  (the same children serve every run, so JVMs start once): each child runs
  `threads` threads of random operations (and interrupts its own threads) for
  `secs` while this process injects storage faults. Then every child
  refresh!es; a reopen reads storage and each child's history, watch sequence
  and final state are checked against it. `new-loc`: (fn []) a fresh
  location. Returns one report per seed."
  [{:keys [new-loc seeds secs threads faults log?] :as opts}]
  (let [dir (ts/temp-dir)
        max-ops (max-ops-per-thread secs)
        runs (vec (for [[i seed] (map-indexed vector seeds)]
                    (let [loc (new-loc)]
                      {:loc loc :seed seed
                       :parent (open loc (ReentrantLock.) init-value (rw-for :shared log?))})))
        children (vec (for [p (range 1 4)]
                        (let [child-opts (assoc (select-keys opts [:faults :without :log?]) :mode :shared
                                                :p p :secs secs :threads threads :max-ops max-ops
                                                :runs (vec (for [[i {:keys [loc seed]}] (map-indexed vector runs)]
                                                             {:loc loc :seed seed
                                                              :out (str (io/file dir (str "run-" i "-child-" p ".edn")))})))
                              proc (ts/child-jvm (str "(require 'duratom.history)"
                                                      "(duratom.history/child-main " (pr-str (pr-str child-opts)) ")"
                                                      "(shutdown-agents)"))]
                          {:p p :proc proc :runs (:runs child-opts)
                           :reader (java.io.BufferedReader. (java.io.InputStreamReader. (.getInputStream ^Process proc)))})))
        tell! (fn [s] (doseq [{:keys [^Process proc]} children]
                        (doto (.getOutputStream proc) (.write (.getBytes (str s "\n"))) (.flush))))
        await! (fn [word secs]
                 (vec (for [{:keys [p reader]} children
                            :let [line (read-line-within reader secs)]
                            :when (not= word line)]
                        {:check (str "child " p " says " word) :got line})))]
    (try
      (loop [i 0 reports [] broken nil]
        (if (or (= i (count runs)) broken)
          reports
          (let [{:keys [loc seed parent]} (nth runs i)
                t0 (System/nanoTime)
                not-ready (await! "ready" 300)
                _ (tell! "start")
                [not-ran fault-counts] (if (seq not-ready)
                                        [nil {}]
                                        (let [stop-faults (start-faults loc faults seed)
                                              r (try (await! "ran" (+ secs 180))
                                                     (catch Throwable x (stop-faults) (throw x)))]
                                          [r (stop-faults)]))
                _ (tell! "go")
                not-done (when-not (or (seq not-ready) (seq not-ran)) (await! "done" 120))
                failed-handshake (concat not-ready not-ran not-done)
                results (when (empty? failed-handshake)
                          (mapv #(edn/read-string (slurp (:out (nth (:runs %) i)))) children))
                history (vec (mapcat :history results))
                violations (if (seq failed-handshake)
                             (vec failed-handshake)
                             (into (check-shared-run results (reopen-read loc 60 log?))
                                   (destroy-checks parent loc log?)))]
            (recur (inc i)
                   (conj reports {:seed seed
                                  :violations violations
                                  :ops (count history)
                                  :fault-phase (fault-phase history)
                                  :tally (tally history)
                                  :compactions (compactions history)
                                  :errors (errors history)
                                  :watches (reduce + (map (comp count :watches) results))
                                  :faults fault-counts
                                  :interrupts (reduce + (map :interrupts results))
                                  :secs (/ (- (System/nanoTime) t0) 1e9)})
                   (seq failed-handshake)))))
      (finally
        (doseq [{:keys [^Process proc]} children]
          (when-not (.waitFor proc 30 TimeUnit/SECONDS) (.destroyForcibly proc)))))))
