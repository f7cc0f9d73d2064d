(ns duratom.core
  "A durable atom: a drop-in replacement for the duratom library.

  A duratom behaves as `clojure.core/atom` (IAtom, IAtom2, IRef, IDeref,
  IReference) and persists every new state to a local file, a PostgreSQL row,
  an S3 object, a SQLite row or a Redis key through duratom's native storage
  engine. Construct one with the `duratom` multimethod or `file-atom`,
  `postgres-atom`, `s3-atom`, `sqlite-atom`, `redis-atom`; `duragent` makes an
  agent whose every state is persisted."
  (:require [duratom.agent :as agent]
            [duratom.backend.file :as file-backend]
            [duratom.backend.postgres :as postgres-backend]
            [duratom.backend.redis :as redis-backend]
            [duratom.backend.s3 :as s3-backend]
            [duratom.backend.sqlite :as sqlite-backend]
            [duratom.engine :as engine]
            [duratom.rw :as rw]
            [duratom.storage :as storage])
  (:import (clojure.lang Agent IAtom IAtom2 IRef IDeref IReference IMeta IObj IFn ISeq PersistentHashMap RT)
           (java.io Closeable Writer)
           (java.util.concurrent.atomic AtomicBoolean AtomicReference)
           (java.util.concurrent.locks Lock ReentrantLock)))

(set! *warn-on-reflection* true)

(defprotocol IDurable
  (destroy [this]
    "Deletes the backing resource (file, row, object) and releases the duratom:
    afterwards `deref` still gives the last value and every mutation throws
    IllegalStateException. Harmless twice.")
  (backend-snapshot [this]
    "Reads and returns what storage holds now (nil when nothing is stored)."))

(defprotocol ^:private IState
  (-update! [this f]
    "new = (f old); validate; persist; set; notify watches. Returns [old
    new], or nil when `f` returns `abort`.")
  (-update-local! [this f] "-update! when this process is the only writer.")
  (-refresh! [this] "Loads the stored state; fires watches if it changed.")
  (-memory-value [this] "The in-memory value, never read from storage.")
  (-released? [this])
  (-alter-watches! [this f args] "Replaces the watch map with (apply f watches args), atomically.")
  (-alter-meta! [this f args] "Replaces the metadata with (apply f meta args), atomically.")
  (-with-meta [this m] "A Duratom with metadata `m` sharing everything else with this one."))

(def ^:private abort
  "Returned by an update fn to leave the state as it is (failed compare-and-set)."
  (Object.))

(defn- validate!
  "As clojure.lang.ARef/validate: a rejected value throws IllegalStateException."
  [vf value]
  (when vf
    (let [ok? (try (vf value)
                   (catch RuntimeException e (throw e))
                   (catch Exception e (throw (IllegalStateException. "Invalid reference state" e))))]
      (when-not ok?
        (throw (IllegalStateException. "Invalid reference state"))))))

(defn- naming-decode
  "`decode` (stored bytes -> value) whose failures are an ex-info naming the
  resource `desc` describes; every read of storage (construction, refresh!,
  backend-snapshot, a shared reload) decodes through it."
  [desc decode]
  (fn [^bytes stored-bytes]
    (try (decode stored-bytes)
         (catch Exception e
           (throw (ex-info (str "duratom: " (name (:backend desc)) " " (:resource desc)
                                ": the stored data cannot be read (it was left untouched): "
                                (.getMessage e))
                           {:duratom/backend (:backend desc) :duratom/resource (:resource desc)
                            :duratom/op :load}
                           e))))))

(defn- decode-stored
  "A fn of what storage holds (`{:bytes :version}`) that decodes it with
  `codec` and tells a log-mode codec the version of the state it decoded
  (see duratom.log/codec)."
  [codec]
  (let [decode (:decode codec) loaded (:loaded codec)]
    (fn [stored]
      (let [value (decode (:bytes stored))]
        (when loaded (loaded value (:version stored)))
        value))))

(defn- notify-watches [ref watches old new]
  (doseq [[k w] watches]
    (w k ref old new)))

(defn- shared-reloader
  "Shared mode: the `reload!` engine/shared-update! calls after a conflict:
  adopts what storage holds and fires the watches of `ref` when it moved."
  [ref engine codec ^AtomicReference watches-ref]
  #(when-let [[o n] (engine/reload! engine (decode-stored codec))]
     (notify-watches ref (.get watches-ref) o n)))

(defn- destroyed
  "The exception every mutation of a destroyed duratom throws."
  [store]
  (IllegalStateException.
   (str "duratom: " (name (:backend store)) " " (:resource store) " has been destroyed")))

;; The validator, the watches and the released flag sit in references that
;; `with-meta` shares with the new Duratom, which differs only in its metadata
;; (as the original's, which shared its underlying atom and release flag).
(deftype Duratom [store codec engine ^Lock lock sync? shared? read-from-storage?
                  ^AtomicReference validator-ref
                  ^AtomicReference watches-ref
                  ^AtomicBoolean released-flag
                  ^:volatile-mutable meta-map]
  IState
  (-update! [this f]
    (.lock lock)
    (if shared?
      (try
        (when (.get released-flag) (throw (destroyed store)))
        (when-let [[old new] (engine/shared-update!
                              engine f #(validate! (.get validator-ref) %) abort
                              ;; storage moved: fire watches when its state differs
                              (shared-reloader this engine codec watches-ref))]
          (notify-watches this (.get watches-ref) old new)
          [old new])
        (finally (.unlock lock)))
      (-update-local! this f)))
  (-update-local! [this f]
    ;; Called holding the lock -update! took; releases it before waiting for
    ;; durability, so that other swaps can join the group commit.
    (let [accepted (try
                     (when (.get released-flag) (throw (destroyed store)))
                     ;; a write of unknown outcome that landed becomes the
                     ;; state first, so that this one builds on it
                     (when sync?
                       (when-let [[old new] (engine/check-doubt! engine)]
                         (notify-watches this (.get watches-ref) old new)))
                     (engine/propose! engine f #(validate! (.get validator-ref) %) abort)
                     (finally (.unlock lock)))]
      (when accepted
        (let [[ticket old new] accepted]
          (when sync? (engine/await-durable! engine ticket))
          (notify-watches this (.get watches-ref) old new)
          [old new]))))
  (-refresh! [this]
    (.lock lock)
    (try
      (when-not (.get released-flag)
        (when-let [[old new] (engine/reload! engine (decode-stored codec))]
          (notify-watches this (.get watches-ref) old new)))
      (engine/current engine)
      (finally (.unlock lock))))
  (-memory-value [_] (engine/current engine))
  (-released? [_] (.get released-flag))
  ;; `locking` stays in return position: Clojure wraps a try elsewhere in a
  ;; fn, where a mutable field cannot be set!.
  (-alter-watches! [_ f args]
    (locking watches-ref (.set watches-ref (apply f (.get watches-ref) args))))
  (-alter-meta! [this f args]
    (locking this (set! meta-map (apply f meta-map args))))
  (-with-meta [_ m]
    (Duratom. store codec engine lock sync? shared? read-from-storage?
              validator-ref watches-ref released-flag m))

  IDeref
  (deref [this]
    (if (and read-from-storage? (not (.get released-flag)))
      (backend-snapshot this)
      (engine/current engine)))

  IAtom
  (swap [this f] (nth (-update! this f) 1))
  (swap [this f a] (nth (-update! this #(f % a)) 1))
  (swap [this f a b] (nth (-update! this #(f % a b)) 1))
  (swap [this f a b more] (nth (-update! this #(apply f % a b more)) 1))
  (compareAndSet [this oldv newv]
    ;; as clojure.lang.Atom: the new value is validated before the compare,
    ;; so a rejected one throws even when the compare would fail
    (when (.get released-flag) (throw (destroyed store)))
    (validate! (.get validator-ref) newv)
    (some? (-update! this #(if (identical? % oldv) newv abort))))
  (reset [this newv] (nth (-update! this (constantly newv)) 1))

  IAtom2
  (swapVals [this f] (-update! this f))
  (swapVals [this f a] (-update! this #(f % a)))
  (swapVals [this f a b] (-update! this #(f % a b)))
  (swapVals [this f a b more] (-update! this #(apply f % a b more)))
  (resetVals [this newv] (-update! this (constantly newv)))

  IRef
  (setValidator [_ vf]
    (validate! vf (engine/current engine))
    (.set validator-ref vf))
  (getValidator [_] (.get validator-ref))
  (getWatches [_] (.get watches-ref))
  (addWatch [this k f]
    (-alter-watches! this assoc [k f])
    this)
  (removeWatch [this k]
    (-alter-watches! this dissoc [k])
    this)

  IObj
  (withMeta [this m] (-with-meta this m))
  IMeta
  (meta [_] meta-map)
  IReference
  (alterMeta [this f args]
    (locking this (set! meta-map (apply f meta-map args))))
  (resetMeta [this m]
    (locking this (set! meta-map m)))

  IDurable
  (destroy [this]
    (.lock lock)
    (try
      (when-not (.get released-flag)
        (engine/destroy! engine)
        (.set released-flag true))
      nil
      (finally (.unlock lock))))
  (backend-snapshot [_]
    (when-not (.get released-flag)
      (when-let [stored (engine/load-stored engine)]
        ((:decode codec) (:bytes stored)))))

  Closeable
  (close [this] (destroy this)))

(defmethod print-method Duratom [^Duratom d ^Writer w]
  (.write w (format "#%s 0x%x " (.getName (class d)) (System/identityHashCode d)))
  (print-method {:status (if (-released? d) :destroyed :ready) :val (-memory-value d)} w))

;; ------------------------------------------------------------ constructing

(defn- resolve-init
  "`:init` may be a value, a no-arg fn or a delay."
  [init]
  (cond (delay? init) @init
        (fn? init) (init)
        :else init))

(defn- sync-mode?
  "nil and ::async mean asynchronous; any other value synchronous."
  [rw]
  (let [mode (:commit-mode rw)]
    (not (or (nil? mode) (= mode ::async)))))

(defn- shared-mode?
  "`:shared? true` in `rw`. Shared mode commits synchronously whatever
  `:commit-mode` says: every default `:rw` carries `:commit-mode
  :duratom.core/async`, and `(assoc default-file-rw :shared? true)` must work."
  [rw]
  (boolean (:shared? rw)))

(defn- check-rw!
  "`:rw` must be a map or nil: anything else (`\"sync\"`, `:sync`) would be
  silently ignored."
  [rw]
  (when-not (or (nil? rw) (map? rw))
    (throw (IllegalArgumentException.
            (str "duratom: :rw must be a map or nil, got " (pr-str rw) " (a " (.getName (class rw)) ")")))))

(defn- read-from-storage? [rw]
  (contains? #{:storage ::storage} (:read-from rw)))

(defn- make-duratom
  "Opens the store `desc` names, loads what it holds (or persists `init` when
  it holds nothing) and returns the Duratom."
  [desc codec lock init rw]
  (when-not (or (nil? lock) (instance? Lock lock))
    (throw (IllegalArgumentException.
            (str "duratom: :lock must be a java.util.concurrent.locks.Lock, got " (class lock)))))
  (let [store (storage/open desc)
        codec (update codec :decode #(naming-decode desc %))
        shared? (shared-mode? rw)]
    (try
      (let [stored (storage/load-stored store)
            value (if stored
                    ((decode-stored codec) stored)
                    (resolve-init init))
            validator (:validator rw)
            _ (validate! validator value) ; before anything is written, as atom's constructor
            sync? (or shared? (sync-mode? rw))
            eng (engine/engine store (:encode codec) sync? (:error-handler rw) value (:version stored))]
        (when (and (nil? stored) (some? value))
          (when-not (engine/commit-initial! eng value shared?)
            ;; another process created it meanwhile: its state wins
            (let [theirs (engine/load-stored eng)]
              (engine/adopt! eng ((decode-stored codec) theirs) (:version theirs)))))
        (Duratom. store codec eng (or lock (ReentrantLock.)) sync? shared? (read-from-storage? rw)
                  (AtomicReference. validator) (AtomicReference. PersistentHashMap/EMPTY) (AtomicBoolean. false)
                  (:meta rw)))
      (catch Throwable e
        (storage/close! store)
        (throw e)))))

(def default-file-rw
  "The default `:rw` of file duratoms: EDN, asynchronous commits, reads from memory."
  rw/default-file-rw)

(def default-postgres-rw
  "The default `:rw` of PostgreSQL duratoms: EDN in a text column."
  rw/default-postgres-rw)

(def default-s3-rw
  "The default `:rw` of S3 duratoms: EDN."
  rw/default-s3-rw)

(def default-redis-rw
  "The default `:rw` of Redis duratoms: EDN text under the key, as the
  original library stored it."
  rw/default-redis-rw)

(def default-sqlite-rw
  "The default `:rw` of SQLite duratoms: EDN in a text column (for a binary
  codec such as nippy, use `:column-type :blob`)."
  rw/default-sqlite-rw)

(defn file-atom
  "A duratom stored in the local file `file-path` (String or java.io.File).
  The parent directory must exist; a missing file is created. If the file
  holds a value it becomes the state; otherwise `init` (a value, a no-arg fn
  or a delay) is persisted and becomes the state. `lock`: a
  java.util.concurrent.locks.Lock serialising mutations (nil: a new
  ReentrantLock). `rw`: see `default-file-rw` and doc/options.md."
  ([file-path]
   (file-atom file-path (ReentrantLock.) nil))
  ([file-path lock init]
   (file-atom file-path lock init default-file-rw))
  ([file-path lock init rw]
   (check-rw! rw)
   (let [rw (or rw default-file-rw)
         path (file-backend/->file file-path)
         codec (rw/file-codec rw path)]
     (make-duratom (file-backend/store-config path (:raw? codec) (:log? codec)) codec lock init rw))))

(defn- row-atom
  "What `postgres-atom` and `sqlite-atom` share: a duratom in row `row-id`
  (nil: 0) of `table-name`, through the backend's `store-config` and `codec`,
  with `default-rw` when `rw` is nil."
  [store-config codec default-rw db-config table-name row-id lock init rw]
  (check-rw! rw)
  (let [rw (or rw default-rw)
        desc (store-config db-config table-name (or row-id 0) (:column-type rw :text))
        codec (codec rw desc)]
    (make-duratom (cond-> desc (:log? codec) (assoc-in [:native-config "log"] true)) codec lock init rw)))

(defn postgres-atom
  "A duratom stored in row `row-id` (default 0) of table `table-name`, which
  is created when missing. `db-config`: a clojure.java.jdbc db-spec for
  PostgreSQL (map or URI string). Otherwise as `file-atom`; `rw`: see
  `default-postgres-rw`."
  ([db-config table-name]
   (postgres-atom db-config table-name 0 (ReentrantLock.) nil))
  ([db-config table-name row-id]
   (postgres-atom db-config table-name row-id (ReentrantLock.) nil))
  ([db-config table-name row-id lock init]
   (postgres-atom db-config table-name row-id lock init default-postgres-rw))
  ([db-config table-name row-id lock init rw]
   (row-atom postgres-backend/store-config rw/postgres-codec default-postgres-rw
             db-config table-name row-id lock init rw)))

(defn s3-atom
  "A duratom stored in object `k` of `bucket` (created when missing).
  `creds`: an amazonica-style map, a no-arg fn returning one (called again for
  rotation), or nil for the AWS default chain. Otherwise as `file-atom`; `rw`:
  see `default-s3-rw`."
  ([creds bucket k]
   (s3-atom creds bucket k (ReentrantLock.) nil))
  ([creds bucket k lock init]
   (s3-atom creds bucket k lock init default-s3-rw))
  ([creds bucket k lock init rw]
   (check-rw! rw)
   (let [rw (or rw default-s3-rw)
         desc (s3-backend/store-config creds bucket k (:metadata rw))
         desc (if (fn? creds)
                (assoc desc :refresh #(s3-backend/store-config creds bucket k (:metadata rw)))
                desc)]
     (make-duratom desc (rw/s3-codec rw desc) lock init rw))))

(defn sqlite-atom
  "A duratom stored in row `row-id` (default 0) of table `table-name` in a
  SQLite database file; the file and the table are created when missing.
  `db-config`: a clojure.java.jdbc db-spec for SQLite
  (`{:dbtype \"sqlite\" :dbname path}`, `{:subprotocol \"sqlite\" :subname
  path}` or `\"jdbc:sqlite:path\"`). Commits are durable when they return
  (WAL, synchronous=FULL). Otherwise as `file-atom`; `rw`: see
  `default-sqlite-rw`. `:log? true` in `rw`: log mode, change records in
  the table `<table-name>_duratom_log` beside the row (see `compact!` and
  doc/backends/sqlite.md)."
  ([db-config table-name]
   (sqlite-atom db-config table-name 0 (ReentrantLock.) nil))
  ([db-config table-name row-id]
   (sqlite-atom db-config table-name row-id (ReentrantLock.) nil))
  ([db-config table-name row-id lock init]
   (sqlite-atom db-config table-name row-id lock init default-sqlite-rw))
  ([db-config table-name row-id lock init rw]
   (row-atom sqlite-backend/store-config rw/sqlite-codec default-sqlite-rw
             db-config table-name row-id lock init rw)))

(defn redis-atom
  "A duratom stored under the Redis key `key-name`. `db-config`: a carmine
  connection spec (`{:pool {} :spec {:host .. :port .. :password .. :db ..
  :uri .. :timeout-ms .. :ssl-fn ..}}`), the spec map alone, a
  `redis://user:pass@host:port/db` String (`rediss://` for TLS), or nil
  (127.0.0.1:6379); see `duratom.backend.redis/store-config`. What is
  durable when depends on the server's `appendonly`/`appendfsync` (see
  doc/backends/redis.md). Otherwise as `file-atom`; `rw`: see `default-redis-rw`."
  ([db-config key-name]
   (redis-atom db-config key-name (ReentrantLock.) nil))
  ([db-config key-name lock init]
   (redis-atom db-config key-name lock init default-redis-rw))
  ([db-config key-name lock init rw]
   (check-rw! rw)
   (let [rw (or rw default-redis-rw)
         desc (redis-backend/store-config db-config key-name)]
     (make-duratom desc (rw/redis-codec rw desc) lock init rw))))

(defmulti duratom
  "Constructs a duratom backed by `backed-by`: `:local-file` (`:file-path`),
  `:postgres-db` (`:db-config`, `:table-name`, `:row-id`), `:aws-s3`
  (`:credentials`, `:bucket`, `:key`), `:sqlite-db` (`:db-config`,
  `:table-name`, `:row-id`) or `:redis-db` (`:db-config`, `:key-name`). Every
  backend takes `:init`, `:lock`, `:rw`, `:shared?` (same as `:shared? true`
  in `:rw`), and `:meta` and `:validator` as `clojure.core/atom` takes them
  (also keys of `:rw`): the validator checks the initial state (what storage
  holds, or `:init`) and a rejected one throws IllegalStateException
  \"Invalid reference state\" with nothing written. `:local-file` and
  `:sqlite-db` also take `:log?` (same as `:log? true` in `:rw`: log mode)."
  (fn [backed-by & _args] backed-by))

(defn- with-keywords
  "The constructor keywords `:shared?`, `:meta` and `:validator`, carried in
  the `:rw` map."
  [rw {:keys [shared? meta validator]}]
  (check-rw! rw)
  (cond-> rw
    (some? shared?) (assoc :shared? shared?)
    (some? meta) (assoc :meta meta)
    (some? validator) (assoc :validator validator)))

(defmethod duratom :local-file
  [_ & {:keys [file-path init lock rw log?] :or {rw default-file-rw} :as opts}]
  (file-atom file-path (or lock (ReentrantLock.)) init
             (cond-> (with-keywords rw opts) (some? log?) (assoc :log? log?))))

(defmethod duratom :postgres-db
  [_ & {:keys [db-config table-name row-id init lock rw] :or {row-id 0 rw default-postgres-rw} :as opts}]
  (postgres-atom db-config table-name row-id (or lock (ReentrantLock.)) init (with-keywords rw opts)))

(defmethod duratom :sqlite-db
  [_ & {:keys [db-config table-name row-id init lock rw log?] :or {row-id 0 rw default-sqlite-rw} :as opts}]
  (sqlite-atom db-config table-name row-id (or lock (ReentrantLock.)) init
               (cond-> (with-keywords rw opts) (some? log?) (assoc :log? log?))))

(defmethod duratom :redis-db
  [_ & {:keys [db-config key-name init lock rw] :or {rw default-redis-rw} :as opts}]
  (redis-atom db-config key-name (or lock (ReentrantLock.)) init (with-keywords rw opts)))

(defmethod duratom :aws-s3
  [_ & {:keys [credentials bucket key init lock rw] :or {rw default-s3-rw} :as opts}]
  (s3-atom credentials bucket key (or lock (ReentrantLock.)) init (with-keywords rw opts)))

;; ------------------------------------------------------- beyond the original

(defn flush!
  "Blocks until every state set before the call is durable. Returns true;
  false if `timeout-ms` passes first. Throws the last persistence error when
  the pending state cannot be written. On a duragent: waits for the actions
  sent before the call, then as above for the agent's state (see
  duratom.agent/flush!)."
  ([dura] (flush! dura nil))
  ([dura timeout-ms]
   (if (instance? Agent dura)
     (agent/flush! dura timeout-ms)
     (engine/flush! (.-engine ^Duratom dura) timeout-ms))))

(defn stats
  "Commit figures of `dura`: `:commits`, `:failures`, `:bytes-written`,
  `:pending?` (a state not yet durable), `:last-error` (nil or the last
  persistence exception), `:last-commit-nanos` (duration of the last commit),
  `:commit-mode` (`:sync` or `:async`) and `:conflicts` (shared mode: commits
  refused because another process wrote first); in log mode also `:log-records` and
  `:log-bytes` (change records and their bytes since the last full state). A duragent's also have `:queued`
  (actions waiting)."
  [dura]
  (if (instance? Agent dura)
    (agent/stats dura)
    (let [d ^Duratom dura]
      (merge (engine/stats (.-engine d))
             (when-let [log-stats (:stats (.-codec d))] (log-stats))))))

(defn compact!
  "Log mode (`:log? true` in a file or SQLite duratom's `:rw`): rewrites the
  file as its newest state alone, plain EDN with duratom's header line
  (readable by `clojure.edn` and the original library), with the same
  crash-safe replace as every full commit; for SQLite, writes the newest
  state into the row as plain EDN and removes the row's change records, in
  one transaction. Returns once it is durable (asynchronous mode: once
  the writer has written it); throws what the write threw. Elsewhere it
  writes the newest state again. On a destroyed duratom it throws
  IllegalStateException, as a mutation does. In shared mode it writes only
  over the version it read (another process's newer commit is loaded and
  compacted instead), and fires no watch unless that load changed the
  state."
  [dura]
  (let [d ^Duratom dura
        engine (.-engine d)
        ^Lock lock (.-lock d)]
    (when (.get ^AtomicBoolean (.-released-flag d)) (throw (destroyed (.-store d))))
    (when-let [compact (:compact! (.-codec d))] (compact))
    (if (.-sync? d)
      ;; the state again, as a commit: its failure is thrown here
      (let [accepted (do (.lock lock)
                         (try
                           (if (.-shared? d)
                             (engine/shared-update! engine identity (fn [_]) abort
                                                    (shared-reloader d engine (.-codec d) (.-watches-ref d)))
                             (engine/propose! engine identity (fn [_]) abort))
                           (finally (.unlock lock))))]
        (when-not (.-shared? d)
          (engine/await-durable! engine (first accepted))))
      (engine/recommit! engine))
    nil))

(defn refresh!
  "Loads the newest stored value now, makes it the state (firing watches if
  it changed) and returns it. Useful in shared mode, where other processes
  write the same storage; `deref` alone never does I/O."
  [^Duratom dura]
  (-refresh! dura))

;; ------------------------------------------------------------------ duragent

(extend-protocol IDurable
  Agent
  ;; As the original: on an agent that is not a duragent both do nothing.
  (destroy [ag]
    (when-let [ops (agent/ops-of ag)] ((:destroy! ops)))
    nil)
  (backend-snapshot [ag]
    (when-let [ops (agent/ops-of ag)] ((:snapshot ops)))))

(defn- make-duragent
  "A duragent over the synchronous duratom `(open rw)` builds: that duratom
  loads the stored state (or persists `:init`) and writes each agent state.
  `opts`: the constructor's keywords; `:meta` and `:validator` as
  `clojure.core/agent` takes them, the validator checking the initial state
  before anything is written."
  [open rw opts]
  (check-rw! rw)
  (let [;; as for duratom, also keys of :rw
        meta (or (:meta opts) (:meta rw))
        validator (or (:validator opts) (:validator rw))
        ^Duratom store (open (-> rw
                                 (assoc :commit-mode :sync :validator validator)
                                 (dissoc :error-handler :shared? :read-from :meta)))
        ;; the agent's validator guards later states; the store's would be
        ;; left behind by a set-validator! on the agent
        _ (set-validator! store nil)
        desc (str (name (:backend (.-store store))) " " (:resource (.-store store)))]
    (agent/duragent (-memory-value store)
                    {:commit! #(reset! store %)
                     :durable #(-memory-value store)
                     :released? #(-released? store)
                     :destroy! #(destroy store)
                     :snapshot #(backend-snapshot store)
                     :stats #(engine/stats (.-engine store))
                     :describe desc}
                    {:error-handler (:error-handler rw) :meta meta :validator validator})))

(defmulti duragent
  "duragent is to agent what duratom is to atom: returns a clojure.lang.Agent
  whose every state is persisted, in order, on the agent's thread before its
  next action runs. Takes the keyword arguments of `duratom` for the same
  `backed-by` (`:init`, `:rw`, `:meta`, `:validator`; `:lock` is accepted and
  unused: the agent serialises its actions). Storage holding a value makes it
  the initial state; otherwise `:init` is persisted. A `:validator` checks
  that initial state (IllegalStateException \"Invalid reference state\",
  nothing written) and every later one (refused states go to the error
  handler and are not stored). Every commit is synchronous (`:commit-mode`
  and `:shared?` do not apply). `(:error-handler rw)`, as in the original:
  `(fn [agent e])` for errors of actions, and `(fn [agent e recommit])` for
  persistence errors, where `(recommit)` stores the agent's current state
  again. After `destroy`, every action fails with IllegalStateException
  \"duratom/duragent has been released!\" (to the error handler) and changes
  nothing. `destroy`, `backend-snapshot`, `flush!` and `stats` work on it."
  (fn [backed-by & _args] backed-by))

(defmethod duragent :local-file
  [_ & {:keys [file-path init rw] :or {rw default-file-rw} :as opts}]
  (make-duragent #(file-atom file-path nil init %) (or rw default-file-rw) opts))

(defmethod duragent :postgres-db
  [_ & {:keys [db-config table-name row-id init rw] :or {row-id 0 rw default-postgres-rw} :as opts}]
  (make-duragent #(postgres-atom db-config table-name (or row-id 0) nil init %) (or rw default-postgres-rw) opts))

(defmethod duragent :aws-s3
  [_ & {:keys [credentials bucket key init rw] :or {rw default-s3-rw} :as opts}]
  (make-duragent #(s3-atom credentials bucket key nil init %) (or rw default-s3-rw) opts))

(defmethod duragent :sqlite-db
  [_ & {:keys [db-config table-name row-id init rw] :or {row-id 0 rw default-sqlite-rw} :as opts}]
  (make-duragent #(sqlite-atom db-config table-name (or row-id 0) nil init %) (or rw default-sqlite-rw) opts))

(defmethod duragent :redis-db
  [_ & {:keys [db-config key-name init rw] :or {rw default-redis-rw} :as opts}]
  (make-duragent #(redis-atom db-config key-name nil init %) (or rw default-redis-rw) opts))
