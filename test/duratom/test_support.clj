(ns duratom.test-support
  "Shared helpers for the test suites: temp dirs, the server coordinates the
  test command exports, child JVMs, and the network namespace's servers and
  faults."
  (:require [clojure.java.io :as io]
            [clojure.string :as str])
  (:import (java.io BufferedReader InputStreamReader)
           (java.nio.file Files)
           (java.nio.file.attribute FileAttribute)
           (java.util UUID)
           (java.util.concurrent TimeUnit)))

(defn- delete-tree
  "Deletes `f` and everything under it, without following symlinks (a test
  may leave a link to a file outside its directory)."
  [^java.io.File f]
  (when (and (.isDirectory f) (not (Files/isSymbolicLink (.toPath f))))
    (run! delete-tree (.listFiles f)))
  (.delete f))

(defonce ^:private temp-dirs
  ;; Every temp dir this JVM made, removed when it exits so that a test run
  ;; leaves /tmp as it found it.
  (let [dirs (atom [])]
    (.addShutdownHook (Runtime/getRuntime)
                      (Thread. ^Runnable #(run! delete-tree @dirs) "duratom-test-temp-dirs"))
    dirs))

(defn temp-dir
  "A fresh temp directory (a java.io.File), removed with its contents when
  this JVM exits."
  []
  (let [d (.toFile (Files/createTempDirectory "duratom-test-" (make-array FileAttribute 0)))]
    (swap! temp-dirs conj d)
    d))

(defn unique-name
  "A fresh lower-case name with `prefix`, valid as table, bucket key or file name."
  [prefix]
  (str prefix "-" (subs (str/replace (str (UUID/randomUUID)) "-" "") 0 12)))

(defn required-env
  "The environment variable `k`; throws, naming the variable and the script
  that sets it, when it is missing: a backend test never silently skips."
  [k script]
  (or (not-empty (System/getenv k))
      (throw (ex-info (str "Missing environment variable " k ": the server this test needs is not running. "
                           "Run the tests with scripts/test (it starts the servers), or run "
                           script " start DIR and source DIR/env.")
                      {:missing k}))))

(defn child-jvm
  "Starts `clojure.main -e code` in a child JVM with this JVM's classpath and
  returns the java.lang.Process (stdout piped, stderr inherited). `env`: a map
  of environment variables to set (nil values remove one)."
  ^Process [code & {:keys [jvm-opts env]}]
  (let [java (str (System/getProperty "java.home") "/bin/java")
        cmd (concat [java "-cp" (System/getProperty "java.class.path")]
                    jvm-opts
                    ["clojure.main" "-e" code])
        pb (ProcessBuilder. ^java.util.List (vec cmd))]
    (doseq [[k v] env]
      (if (some? v)
        (.put (.environment pb) k v)
        (.remove (.environment pb) k)))
    (-> pb
        (.redirectError java.lang.ProcessBuilder$Redirect/INHERIT)
        (.start))))

(defn child-output
  "Runs `code` in a child JVM (see child-jvm) to the end; returns its stdout."
  [code & opts]
  (let [p (apply child-jvm code opts)
        out (slurp (.getInputStream p))]
    (.waitFor p)
    out))

(defn sigkill-after-acks
  "Starts `code` in a child JVM (see child-jvm), which prints each value it
  has durably committed (a number) on a line of its own; reads `n` lines,
  kills the child with SIGKILL and waits for it. Returns the last number
  read: the newest state the child acknowledged (nil if none)."
  [code n]
  (let [child (child-jvm code)
        r (BufferedReader. (InputStreamReader. (.getInputStream child)))
        acked (loop [i 0 last nil]
                (if-let [line (when (< i n) (.readLine r))]
                  (recur (inc i) (Long/parseLong (str/trim line)))
                  last))]
    (.destroyForcibly child)
    (.waitFor child 1 TimeUnit/MINUTES)
    acked))

(defn sh!
  "Runs a command; returns its stdout; throws with its output when it fails."
  [& args]
  (let [p (-> (ProcessBuilder. ^java.util.List (vec args)) (.redirectErrorStream true) (.start))
        out (slurp (.getInputStream p))]
    (when-not (zero? (.waitFor p))
      (throw (ex-info (str "command failed: " (str/join " " args) "\n" out) {:args args})))
    out))

(defn big-value
  "A map whose EDN is at least `mb` megabytes."
  [mb]
  (let [chunk (apply str (repeat 1000 "x"))]
    (into {} (map (fn [i] [i chunk]) (range (* mb 1050))))))

(defn sample-value
  "A value holding every type the EDN round trip must keep: strings with
  emoji, NUL, quotes, backslashes and newlines; characters; namespaced
  keywords and symbols; longs at both extremes, bigints, bigdecimals, ratios,
  doubles; #inst and #uuid; nested maps, vectors, sets, lists; sorted maps
  and sets, queues, and collections carrying metadata."
  []
  {:strings ["emoji \uD83D\uDE00 \uD83C\uDF89" "nul \u0000 here" "quote \" q" "back\\slash" "new\nline\r\ttab" ""]
   :chars [\a \newline \space \tab \" \\ \u00e9 \u0000 \u0001]
   :keywords [:plain :ns/kw :a.b/c]
   :symbols ['plain 'ns/sym 'a.b/c]
   :longs [Long/MIN_VALUE Long/MAX_VALUE 0 -1]
   :bigints [12345678901234567890123N -1N]
   :bigdecimals [1.5M 0.000000000000000000001M]
   :ratios [1/3 -22/7]
   :doubles [1.5 -0.0 1.0E300 Double/MIN_VALUE]
   :inst #inst "2024-02-29T12:34:56.789-00:00"
   :uuid #uuid "8d5f1c1e-2b3a-4c5d-9e8f-0a1b2c3d4e5f"
   :nested {:map {:a {:b [1 #{2 3} '(4 5)]}} :list '(1 (2 (3))) :set #{[1 2] {:x 1}}}
   :sorted-map (sorted-map :b 2 :a 1 :c 3)
   :sorted-set (sorted-set 3 1 2)
   :queue (conj clojure.lang.PersistentQueue/EMPTY 1 2 3)
   :with-meta (with-meta [1 2 3] {:source "test" :n 1})
   :map-with-meta (with-meta {:k :v} {:tag :m})})

(defn types-of
  "A tree of the value's collection classes and metadata, so that equality
  also checks that types and metadata survived."
  [x]
  (cond
    (map? x) [(class x) (meta x) (into {} (map (fn [[k v]] [k (types-of v)]) x))]
    (coll? x) [(class x) (meta x) (mapv types-of x)]
    :else (class x)))

(defn net-dir
  "The directory of the network namespace and its servers
  (DURATOM_TEST_NET_DIR, which scripts/test exports); throws, saying how to
  make one, when missing: a backend test never silently skips."
  []
  (or (not-empty (System/getenv "DURATOM_TEST_NET_DIR"))
      (throw (ex-info (str "Missing environment variable DURATOM_TEST_NET_DIR: the network fault tests need "
                           "servers inside a network namespace. Run the tests with scripts/test as root (it "
                           "sets them up), or run scripts/netns up DIR, then with DIR/env's variables set "
                           "scripts/postgres-server start DIR/pg, scripts/s3-server start DIR/s3 and "
                           "scripts/redis-server start DIR/redis, and export DURATOM_TEST_NET_DIR=DIR.")
                      {:missing "DURATOM_TEST_NET_DIR"}))))

(defn net-server-dir
  "The directory of `server` (\"pg\", \"s3\", \"redis\") inside the network namespace."
  [server]
  (str (io/file (net-dir) server)))

(defn- env-file
  "The variables an env file exports, as a map; throws saying `what` is
  missing when there is no such file."
  [^java.io.File f what]
  (when-not (.exists f)
    (throw (ex-info (str "No " f ": " what " (scripts/test sets it up)") {:missing (str f)})))
  (into {} (for [line (str/split-lines (slurp f))
                 :let [[_ k v] (re-matches #"export ([A-Z0-9_]+)=(.*)" line)]
                 :when k]
             [k v])))

(defn net-server-env
  "The variables that the namespace's `server` exports in its env file, as a map."
  [server]
  (env-file (io/file (net-server-dir server) "env")
            (str "the " server " server of the network fault tests is not running inside the namespace")))

(defn net-address
  "The address of the network namespace (its end of the veth pair)."
  []
  ((env-file (io/file (net-dir) "env") "the network namespace is not set up") "DURATOM_TEST_NET_ADDR"))

(defn net-fault!
  "Replaces the fault on the namespace's link with `kind` (:blackhole,
  :reset, :slow, :down, :clear, :resume, or :hold with a port and optionally
  the host's port of one connection; see scripts/netns)."
  [kind & args]
  (apply sh! "scripts/netns" "fault" (net-dir) (name kind) (map str args)))
