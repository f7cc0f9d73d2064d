(ns duratom.file-test
  (:require [clojure.edn :as edn]
            [clojure.java.io :as io]
            [clojure.string :as str]
            [clojure.test :refer [deftest is testing]]
            [duratom.behaviour :as behaviour]
            [duratom.core :as d]
            [duratom.duragent :as duragent]
            [duratom.readers :as readers]
            [duratom.shared :as shared]
            [duratom.test-support :as ts]
            [taoensso.nippy :as nippy])
  (:import (duratom Native)
           (java.io BufferedReader File InputStreamReader)
           (java.nio.file Files)
           (java.util.concurrent CountDownLatch Executors TimeUnit)))

(def backend
  {:name "local-file"
   :new-location (fn [] (io/file (ts/temp-dir) "state.edn"))
   :open (fn [loc init rw] (d/file-atom loc nil init rw))
   :open-agent (fn [loc init rw] (d/duragent :local-file :file-path loc :init init :rw rw))
   :kw-args (fn [loc] [:local-file :file-path loc])
   :default-rw d/default-file-rw})

(defn- move! [^File from ^File to]
  (is (.renameTo from to) (str "moving " from " to " to)))

;; Breaking a file store as root: permission bits do not stop root, but a
;; directory that is not there does.
(defn- break! [^File loc] (move! (.getParentFile loc) (File. (str (.getParentFile loc) ".away"))))
(defn- mend! [^File loc] (move! (File. (str (.getParentFile loc) ".away")) (.getParentFile loc)))

(deftest file-behaviour
  (behaviour/run-all backend))

(deftest file-behaviour-in-log-mode
  (behaviour/run-all (assoc backend :default-rw (assoc d/default-file-rw :log? true))))

(deftest file-failures-and-recovery
  (behaviour/error-handler-and-recommit backend break! mend!))

(deftest file-duragent
  (duragent/run-all backend break! mend!))

(deftest keyword-constructor-and-positional-arities
  (let [dir (ts/temp-dir)
        p (str (io/file dir "k.edn"))]
    (let [a (d/duratom :local-file :file-path p :init {:x 1} :rw (assoc d/default-file-rw :commit-mode :sync))]
      (swap! a update :x inc)
      (is (= {:x 2} @(d/file-atom p)))
      (is (= {:x 2} @(d/file-atom (io/file p) (java.util.concurrent.locks.ReentrantLock.) {:x 0})))
      (d/destroy a))
    (testing "a user-supplied lock is used"
      (let [lock (java.util.concurrent.locks.ReentrantLock.)
            a (d/duratom :local-file :file-path p :init 0 :lock lock)
            held (atom nil)]
        (swap! a (fn [n] (reset! held (.isHeldByCurrentThread lock)) (inc n)))
        (is (true? @held))
        (d/destroy a)))
    (testing "bad arguments are clear errors"
      (is (thrown-with-msg? clojure.lang.ExceptionInfo #":file-path" (d/duratom :local-file :init 1)))
      (is (thrown-with-msg? IllegalArgumentException #":lock" (d/file-atom p "not a lock" 1))))))

(deftest faults-name-the-path-and-keep-the-last-good-file
  (let [dir (ts/temp-dir)]
    (testing "missing parent directory at construction"
      (let [p (io/file dir "missing" "x.edn")
            e (try (d/file-atom p) nil (catch Exception e e))]
        (is (some? e))
        (is (str/includes? (ex-message e) (str p)))
        (is (str/includes? (ex-message e) "does not exist"))
        (is (= :local-file (:duratom/backend (ex-data e))))))
    (testing "the path is a directory"
      (let [e (try (d/file-atom dir) nil (catch Exception e e))]
        (is (some? e))
        (is (str/includes? (ex-message e) (str dir)))
        (is (str/includes? (ex-message e) "directory"))))
    (testing "a damaged file is an error at construction and is left untouched"
      (let [p (io/file dir "damaged.edn")
            a (d/file-atom p nil {:balance 100} {:commit-mode :sync})
            _ (d/destroy a)
            a (d/file-atom p nil {:balance 100} {:commit-mode :sync})
            good (slurp p)
            damaged (str/replace good "100" "900")]
        (spit p damaged)
        (let [e (try (d/file-atom p nil {:fresh true} nil) nil (catch Exception e e))]
          (is (some? e))
          (is (str/includes? (ex-message e) (str p)))
          (is (str/includes? (ex-message e) "damaged")))
        (is (= damaged (slurp p)) "nothing was overwritten")
        (spit p (subs good 0 (- (count good) 3)))
        (is (thrown-with-msg? Exception #"damaged" (d/file-atom p nil {:fresh true} nil)) "a truncated file too")))
    (testing "plain EDN that cannot be read is an error naming the path, left untouched"
      (let [p (io/file dir "garbage.edn")]
        (spit p "{:unbalanced [1 2")
        (is (thrown-with-msg? Exception (re-pattern (java.util.regex.Pattern/quote (str p)))
                              (d/file-atom p nil {:fresh true} nil)))
        (is (= "{:unbalanced [1 2" (slurp p)))))
    (testing "the directory removed after construction, then restored"
      (let [p (io/file (ts/temp-dir) "state.edn")
            a (d/file-atom p nil {:n 1} {:commit-mode :sync})]
        (break! p)
        (let [e (try (swap! a update :n inc) nil (catch Exception e e))]
          (is (some? e))
          (is (str/includes? (ex-message e) (str p))))
        (is (= {:n 1} @a))
        (mend! p)
        (is (= {:n 1} (edn/read-string readers/default (slurp p))) "the last good file is intact")
        (is (= {:n 2} (swap! a update :n inc)) "the next swap! succeeds")
        (d/destroy a)))))

(deftest compatible-with-the-original-library
  (let [dir (ts/temp-dir)]
    (testing "files written by the original library load unchanged"
      (let [p (io/file dir "original.edn")
            text "{:users #sorted/map {\"b\" 2, \"a\" 1}, :q #queue [1 2], :tagged #iobj [[1 2] {:m true}], :s #sorted/set #{3 1}}"]
        (spit p text)
        (let [a (d/file-atom p)]
          (is (= (sorted-map "a" 1 "b" 2) (:users @a)))
          (is (sorted? (:users @a)))
          (is (instance? clojure.lang.PersistentQueue (:q @a)))
          (is (= {:m true} (meta (:tagged @a))))
          (is (sorted? (:s @a)))
          (is (= text (slurp p)) "loading writes nothing"))))
    (testing "what we write reads back with clojure.edn and duratom.readers/default"
      (let [p (io/file dir "ours.edn")
            v (ts/sample-value)
            a (d/file-atom p nil v {:commit-mode :sync})]
        (is (= v (edn/read-string readers/default (slurp p :encoding "UTF-8"))))
        (d/destroy a)))))

(deftest custom-rw-with-nippy
  (let [p (io/file (ts/temp-dir) "state.nippy")
        rw {:read nippy/thaw-from-file :write nippy/freeze-to-file :commit-mode :sync}
        v (ts/sample-value)
        a (d/file-atom p nil v rw)]
    (is (= v (nippy/thaw-from-file p)) "the file is nippy, as the user's :read expects")
    (swap! a assoc :more 1)
    (is (= (assoc v :more 1) @(d/file-atom p nil nil rw)))
    (is (= (assoc v :more 1) (d/backend-snapshot a)))
    ;; Exactly the state file: neither the JVM's `.duratom-*.rw` files for the
    ;; custom :write/:read nor the store's `.state.nippy.*.tmp` files remain.
    (is (= ["state.nippy"] (vec (.list (.getParentFile p)))) "no temp files left behind")
    (d/destroy a)))

(deftest misuse-never-crashes-the-jvm
  (testing "bogus handles give exceptions"
    (doseq [h [0 -1 Long/MAX_VALUE 987654321]]
      (is (thrown-with-msg? IllegalStateException #"no open duratom store" (Native/load h)))
      (is (thrown-with-msg? IllegalStateException #"no open duratom store" (Native/commit h (into-array [(byte-array 1)]) 1 nil nil)))
      (is (thrown-with-msg? IllegalStateException #"no open duratom store" (Native/delete h)))
      (Native/close h))
    (is (thrown? IllegalArgumentException (Native/open (.getBytes "no backend here"))))
    (testing "a configuration key the native side does not read is an error at open, naming it"
      (let [path (pr-str (str (io/file (ts/temp-dir) "k.edn")))]
        (is (thrown-with-msg? IllegalArgumentException #"local-file: invalid configuration: unknown key `paht`"
                              (Native/open (.getBytes (str "{:backend :local-file :path " path " :paht \"x\"}") "UTF-8"))))
        (is (thrown-with-msg? IllegalArgumentException #"`raw`: expected a boolean, got a string"
                              (Native/open (.getBytes (str "{:backend :local-file :path " path " :raw \"yes\"}") "UTF-8"))))))
    (let [h (Native/open (.getBytes (str "{:backend :local-file :path " (pr-str (str (io/file (ts/temp-dir) "n.edn"))) "}")
                                    "UTF-8"))]
      (is (thrown-with-msg? IllegalArgumentException #"length" (Native/commit h (into-array [(byte-array 4)]) 5 nil nil)))
      (is (thrown-with-msg? IllegalArgumentException #"length" (Native/commit h (into-array [(byte-array 4)]) -1 nil nil)))
      (is (thrown? Exception (Native/commit h nil 1 nil nil)))
      (Native/close h)
      (Native/close h))
    (is (thrown? Exception (Native/open nil))))
  (testing "destroy racing swap!: every swap! either lands before or throws after, and nothing comes back"
    (dotimes [round 10]
      (let [p (io/file (ts/temp-dir) "race.edn")
            mode (if (even? round) :sync :duratom.core/async)
            a (d/file-atom p nil 0 {:commit-mode mode})
            pool (Executors/newFixedThreadPool 4)
            start (CountDownLatch. 1)
            outcomes (doall (for [_ (range 4)]
                              (.submit pool ^Callable (fn []
                                                        (.await start)
                                                        (loop [ok 0]
                                                          (if (try (swap! a inc) true
                                                                   (catch IllegalStateException _ false))
                                                            (recur (inc ok))
                                                            ok))))))]
        (.countDown start)
        (while (< @a 50) (Thread/yield))
        (d/destroy a)
        (let [landed (reduce + (map #(.get ^java.util.concurrent.Future % 1 TimeUnit/MINUTES) outcomes))]
          (is (= landed @a) "deref gives the last value set"))
        (.shutdown pool)
        (is (not (.exists p)) "the file is gone and no writer brought it back")
        (d/destroy a)))))

(deftest crash-durability-under-sigkill
  (let [dir (ts/temp-dir)
        p (io/file dir "crash.edn")
        rnd (java.util.Random. 42)
        code (str "(require 'duratom.core)"
                  "(let [a (duratom.core/file-atom \"" p "\" nil {:n 0} {:commit-mode :sync})]"
                  "  (loop [] (let [v (:n (swap! a update :n inc))] (println v) (flush)) (recur)))")]
    (dotimes [i 50]
      (let [acked (ts/sigkill-after-acks code (inc (.nextInt rnd 200)))]
        (is (some? acked) "the child acknowledged commits before the kill")
        (let [stored (:n @(d/file-atom p))]
          (is (and (some? stored) (>= stored acked))
              (str "kill " i ": stored " stored ", last acknowledged " acked)))))
    (is (empty? (filter #(str/ends-with? (.getName ^File %) ".tmp") (.listFiles dir)))
        "temp files of killed writers are removed when the file is next opened")))

(def shared-backend
  (assoc backend :child-open-code (fn [loc] (str "(duratom.core/file-atom \"" loc "\" nil nil {:shared? true})"))))

(deftest file-shared-mode
  (shared/run-all shared-backend))

(def nippy-rw {:read nippy/thaw-from-file :write nippy/freeze-to-file})

(def shared-nippy-backend
  "A custom :rw file has no header; its version is a hash of its bytes."
  (assoc backend
         :name "local-file (nippy :rw)"
         :new-location (fn [] (io/file (ts/temp-dir) "state.nippy"))
         :open (fn [loc init rw] (d/file-atom loc nil init (merge nippy-rw rw)))
         :child-open-code (fn [loc] (str "(duratom.core/file-atom \"" loc "\" nil nil"
                                         " {:read (requiring-resolve 'taoensso.nippy/thaw-from-file)"
                                         "  :write (requiring-resolve 'taoensso.nippy/freeze-to-file)"
                                         "  :shared? true})"))))

(deftest file-shared-mode-with-a-custom-rw
  (shared/three-processes-no-lost-update shared-nippy-backend)
  (shared/refresh-and-watches shared-nippy-backend))

(deftest a-killed-lock-holder-does-not-block-the-others
  (let [p (io/file (ts/temp-dir) "locked.edn")
        dura (d/file-atom p nil 0 {:shared? true})
        ;; flock --no-fork: the process that holds the lock is the one we kill
        holder (.start (ProcessBuilder. ["flock" "--no-fork" (str p ".lock") "sh" "-c" "echo locked; exec sleep 600"]))
        line (.readLine (BufferedReader. (InputStreamReader. (.getInputStream holder))))]
    (is (= "locked" line))
    (let [swapping (future (swap! dura inc))]
      (is (= ::still-waiting (deref swapping 300 ::still-waiting)) "swap! waits while another process holds the lock")
      (.destroyForcibly holder) ; SIGKILL
      (.waitFor holder 1 TimeUnit/MINUTES)
      (is (= 1 (deref swapping 60000 ::timed-out)) "the OS dropped the dead holder's lock")
      (is (= 1 (d/backend-snapshot dura))))
    (d/destroy dura)))

(deftest async-states-land-when-the-jvm-exits
  ;; No flush! in the child: the shutdown hook must write the newest state.
  (let [p (io/file (ts/temp-dir) "exit.edn")
        out (ts/child-output (str "(require 'duratom.core)"
                                  "(let [a (duratom.core/file-atom \"" p "\" nil 0 nil)]"
                                  "  (dotimes [_ 20000] (swap! a inc))"
                                  "  (println (:pending? (duratom.core/stats a))))"
                                  "(System/exit 0)"))]
    (is (#{"true" "false"} (str/trim out)) "the child ran")
    (is (= 20000 @(d/file-atom p)))))

(defn- symlink? [^File f] (Files/isSymbolicLink (.toPath f)))

(deftest a-symlinked-path-is-written-through-to-its-target
  (let [dir (ts/temp-dir)
        target-dir (doto (io/file dir "real") (.mkdir))
        target (io/file target-dir "state.edn")
        link (io/file dir "link.edn")]
    (Files/createSymbolicLink (.toPath link) (.toPath (io/file "real" "state.edn"))
                              (make-array java.nio.file.attribute.FileAttribute 0))
    (let [a (d/file-atom link nil {:n 0} {:commit-mode :sync})]
      (dotimes [_ 5] (swap! a update :n inc))
      (is (symlink? link) "the link stays a link")
      (is (.isFile target))
      (is (= {:n 5} (edn/read-string readers/default (slurp target))) "the content lands in the target")
      (is (= {:n 5} @(d/file-atom target)) "a duratom on the target itself sees it")
      (is (= #{"link.edn" "real"} (set (.list dir))) "no temp file beside the link")
      (is (= #{"state.edn"} (set (.list target-dir))) "no temp file left beside the target"))))

(defn- refused-untouched
  "Opens a duratom on `path` (on another thread: opening a FIFO would block);
  returns the exception's message, or a description of what went wrong."
  [^File path]
  (let [f (future (try (d/file-atom path nil {:x 1} {:commit-mode :sync}) :accepted
                       (catch Exception e (ex-message e))))]
    (deref f 10000 :blocked)))

(deftest fifos-and-devices-are-refused-at-construction-and-left-untouched
  (let [dir (ts/temp-dir)
        fifo (io/file dir "fifo.edn")
        device (io/file dir "device.edn")]
    (ts/sh! "mkfifo" (str fifo))
    (let [p (-> (ProcessBuilder. ^java.util.List ["mknod" (str device) "c" "1" "3"]) (.redirectErrorStream true) (.start))
          out (slurp (.getInputStream p))]
      (is (zero? (.waitFor p))
          (str "mknod of a character device failed; this test needs root or CAP_MKNOD (CI runs as root): " out)))
    (doseq [[^File f kind] [[fifo "a FIFO"] [device "a character device"]]]
      (let [before (ts/sh! "stat" "-c" "%F %t:%T %Y" (str f))
            msg (refused-untouched f)]
        (is (string? msg) (str f " was " msg))
        (when (string? msg)
          (is (str/includes? msg (str f)))
          (is (str/includes? msg kind)))
        (is (= before (ts/sh! "stat" "-c" "%F %t:%T %Y" (str f))) (str f " is unchanged"))))
    (is (= #{"fifo.edn" "device.edn"} (set (.list dir))) "nothing was created beside them")))

(deftest two-stores-on-one-path-in-one-jvm-never-fail
  (let [p (io/file (ts/temp-dir) "twice.edn")
        stores [(d/file-atom p nil 0 {:commit-mode :sync}) (d/file-atom p nil 0 {:commit-mode :sync})]
        config (.getBytes (str "{:backend :local-file :path " (pr-str (str p)) "}") "UTF-8")
        done (promise)
        ;; Opening a store cleans up temp files: keep doing so meanwhile.
        opener (future (loop [n 0]
                         (if (realized? done)
                           n
                           (do (Native/close (Native/open config)) (recur (inc n))))))
        pool (Executors/newFixedThreadPool 2)
        failures (java.util.concurrent.atomic.AtomicLong.)
        errors (java.util.concurrent.ConcurrentLinkedQueue.)
        runs (doall (for [a stores]
                      (.submit pool ^Runnable (fn []
                                                (dotimes [_ 1000]
                                                  (try (swap! a inc)
                                                       (catch Exception e
                                                         (.incrementAndGet failures)
                                                         (.add errors (ex-message e)))))))))]
    (doseq [^java.util.concurrent.Future r runs] (.get r 10 TimeUnit/MINUTES))
    (deliver done true)
    (.shutdown pool)
    (is (pos? @opener) "stores were opened during the swaps")
    (is (zero? (.get failures)) (str "failures: " (take 3 errors)))
    (is (= [1000 1000] (mapv deref stores)))
    (is (= 1000 @(d/file-atom p)) "the file holds the last commit, a complete state")
    (is (= ["twice.edn"] (vec (.list (.getParentFile p)))) "no temp files left")))

(deftest clean-up-removes-temp-files-only-when-their-writer-is-gone
  (let [dir (ts/temp-dir)
        p (io/file dir "state.edn")
        pid (.pid (java.lang.ProcessHandle/current))
        ;; Named with a live pid (this JVM's), as a reused pid would be; no writer holds it.
        stale (doto (io/file dir (str ".state.edn." pid "-1-1-00000000deadbeef.tmp")) (spit "partial"))
        in-flight (doto (io/file dir (str ".state.edn." pid "-2-1-00000000cafef00d.tmp")) (spit "partial"))
        ;; A live writer elsewhere holds the flock on its temp file while it writes.
        holder (.start (ProcessBuilder. ["flock" "--no-fork" (str in-flight) "sh" "-c" "echo locked; exec sleep 600"]))]
    (try
      (is (= "locked" (.readLine (BufferedReader. (InputStreamReader. (.getInputStream holder))))))
      (let [a (d/file-atom p nil 1 {:commit-mode :sync})]
        (is (not (.exists stale)) "a temp file nobody holds is removed, though its pid is alive")
        (is (.exists in-flight) "a temp file a live writer holds is kept")
        (swap! a inc)
        (is (.exists in-flight) "commits leave it alone too"))
      (.destroyForcibly holder) ; SIGKILL: the OS releases its lock
      (.waitFor holder 1 TimeUnit/MINUTES)
      (is (= 2 @(d/file-atom p)))
      (is (not (.exists in-flight)) "removed at the next open once its writer is gone")
      (finally (.destroyForcibly holder)))))

(deftest every-read-of-unreadable-stored-data-names-the-file
  ;; Plain EDN (no header) loads as the original library's files do; a tag no
  ;; reader knows makes it unreadable. Construction, backend-snapshot and
  ;; refresh! must all say which file, and leave it as it is.
  (let [p (io/file (ts/temp-dir) "state.edn")
        a (d/file-atom p nil {:n 1} {:commit-mode :sync})
        unreadable "{:n #no.such/tag 2}"
        names-file? (fn [f]
                      (let [e (try (f) nil (catch Exception e e))]
                        (is (some? e) "throws")
                        (when e
                          (is (str/includes? (ex-message e) (str p)) (ex-message e))
                          (is (= :load (:duratom/op (ex-data e)))))))]
    (spit p unreadable)
    (names-file? #(d/backend-snapshot a))
    (names-file? #(d/refresh! a))
    (is (= {:n 1} @a) "memory keeps its state")
    (names-file? #(d/file-atom p nil {:n 0} {:commit-mode :sync}))
    (is (= unreadable (slurp p)) "the file is left untouched")
    (d/destroy a)))

(defn- v1-file-text
  "A file as the build before the v2 header wrote it: `;duratom/v1` line whose
  CRC-32 covers only the UTF-8 body, then the body."
  [version ^String body]
  (let [bytes (.getBytes body "UTF-8")
        crc (doto (java.util.zip.CRC32.) (.update bytes))]
    (format ";duratom/v1 version=%d length=%d crc32=%08x\n%s" version (alength bytes) (.getValue crc) body)))

(deftest files-of-the-v1-build-load-and-are-rewritten-as-v2
  (let [dir (ts/temp-dir)]
    (testing "a v1 file loads; the next commit writes v2, counting on"
      (let [p (io/file dir "v1.edn")
            _ (spit p (v1-file-text 41 "{:users #sorted/map {\"ada\" 1}, :n 41}") :encoding "UTF-8")
            a (d/file-atom p nil {:fresh true} {:commit-mode :sync})]
        (is (= {:users {"ada" 1} :n 41} @a))
        (is (sorted? (:users @a)))
        (swap! a update :n inc)
        (let [text (slurp p :encoding "UTF-8")]
          (is (str/starts-with? text ";duratom/v2 version=42 ") text)
          (is (= {:users {"ada" 1} :n 42} (edn/read-string readers/default text))))
        (is (= {:users {"ada" 1} :n 42} @(d/file-atom p)) "and reopens")
        (d/destroy a)))
    (testing "in shared mode too (the version goes on from the v1 file's)"
      (let [p (io/file dir "v1-shared.edn")
            _ (spit p (v1-file-text 7 "{:n 7}"))
            a (d/file-atom p nil nil {:shared? true})]
        (is (= {:n 7} @a))
        (is (= {:n 8} (swap! a update :n inc)))
        (is (str/starts-with? (slurp p) ";duratom/v2 version=8 "))
        (d/destroy a)))
    (testing "a damaged v1 file is refused, named, and left untouched"
      (let [good (v1-file-text 3 "{:balance 100}")]
        (doseq [[what damaged] [["a changed value" (str/replace good "100" "900")]
                                ["a changed length" (str/replace good "length=14" "length=15")]
                                ["a cut-off file" (subs good 0 (- (count good) 2))]
                                ["a cut-off tag" (subs good 0 8)]]]
          (let [p (io/file dir "v1-damaged.edn")
                _ (spit p damaged)
                e (try (d/file-atom p nil {:fresh true} nil) nil (catch Exception e e))]
            (is (some? e) what)
            (is (str/includes? (str (ex-message e)) (str p)) what)
            (is (str/includes? (str (ex-message e)) "damaged") what)
            (is (= damaged (slurp p)) (str what ": nothing was overwritten"))))))))

(deftest a-shared-commit-refuses-a-damaged-file-naming-it
  (let [p (io/file (ts/temp-dir) "cas.edn")
        a (d/file-atom p nil {:balance 100} {:shared? true})]
    (swap! a update :balance inc)
    (let [good (slurp p)]
      ;; The header (and its version) unchanged, the value damaged; then the
      ;; version damaged into a plausible one, the value intact.
      (doseq [[what damaged] [["a damaged value" (str/replace good "101" "901")]
                              ["a damaged version" (str/replace good "version=2 " "version=3 ")]]]
        (spit p damaged)
        (let [e (try (swap! a update :balance inc) nil (catch Exception e e))]
          (is (some? e) (str what ": the swap! throws"))
          (is (str/includes? (str (ex-message e)) (str p)) what)
          (is (str/includes? (str (ex-message e)) "damaged") what))
        (is (= damaged (slurp p)) (str what ": the damaged file was not overwritten"))
        (is (= {:balance 101} @a) (str what ": memory keeps the last good state")))
      (spit p good)
      (is (= {:balance 102} (swap! a update :balance inc)) "the intact file commits again"))
    (d/destroy a)))

(deftest a-name-of-255-bytes-works-in-every-mode
  (let [dir (ts/temp-dir)
        name (str (apply str (repeat 251 \n)) ".edn")
        p (io/file dir name)]
    (is (= 255 (count (.getBytes name "UTF-8"))))
    (testing "construct and swap!, synchronously"
      (let [a (d/file-atom p nil {:n 0} {:commit-mode :sync})]
        (swap! a update :n inc)
        (is (= {:n 1} @(d/file-atom p)))))
    (testing "shared mode, two duratoms on the file"
      (let [a (d/file-atom p nil nil {:shared? true})
            b (d/file-atom p nil nil {:shared? true})]
        (swap! a update :n inc)
        (swap! b update :n inc)
        (swap! a update :n inc)
        (is (= {:n 4} @a (d/refresh! b) (edn/read-string (slurp p))))
        (d/destroy a)))
    (is (empty? (.list ^File dir)) "destroy leaves nothing beside the file")))

(deftest a-failed-construction-leaves-the-directory-as-it-found-it
  (doseq [rw [nil {:commit-mode :sync} {:shared? true}]
          [why init] [["an :init that throws" (fn [] (throw (ex-info "no initial state" {})))]
                      ["an :init the codec refuses" {:bad (Object.)}]]]
    (testing (str why ", rw " (pr-str rw))
      (let [dir (ts/temp-dir)
            path (io/file dir "state.edn")]
        (is (thrown? Exception (d/file-atom path nil init rw)))
        (is (= [] (vec (.list dir))) "no file left behind")
        (spit path "")
        (is (thrown? Exception (d/file-atom path nil init rw)))
        (is (= ["state.edn"] (vec (.list dir))) "an empty file that was there stays")
        (is (= 0 (.length path)))))))

(deftest a-failed-construction-racing-another-duratom-leaves-that-duratoms-state
  ;; Two duratoms open the same new path at once; one construction fails.
  ;; Its clean-up must never take away the state the other stored.
  (dotimes [i 60]
    (let [path (io/file (ts/temp-dir) "raced.edn")
          go (promise)
          failing (future @go (try (d/file-atom path nil (fn [] (throw (ex-info "no initial state" {}))) {:shared? true})
                                   (catch Exception _ :failed)))
          winning (future @go (let [a (d/file-atom path nil {:i i} {:shared? true :commit-mode :sync})]
                                (swap! a assoc :w true)))]
      (deliver go true)
      ;; opening after the other stored its state, it calls no :init and succeeds
      (is (or (= :failed @failing) (instance? duratom.core.Duratom @failing)))
      (is (= {:i i :w true} @winning))
      (is (= {:i i :w true} (edn/read-string (slurp path))) (str "round " i)))))
