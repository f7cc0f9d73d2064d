(ns duratom.redis-test
  "The Redis backend against a real server (scripts/test starts one with
  scripts/redis-server). redis-cli is the independent client."
  (:require [clojure.edn :as edn]
            [clojure.string :as str]
            [clojure.test :refer [deftest is testing]]
            [duratom.behaviour :as behaviour]
            [duratom.core :as d]
            [duratom.duragent :as duragent]
            [duratom.readers :as readers]
            [duratom.shared :as shared]
            [duratom.test-support :as ts]
            [taoensso.nippy :as nippy])
  (:import (java.io BufferedInputStream ByteArrayOutputStream InputStream OutputStream)
           (java.net Socket)
           (java.nio.charset StandardCharsets)
           (java.util Arrays)))

(def ^:private script "scripts/redis-server")

(defn- env [k] (ts/required-env k script))

(defn conn
  "The test server as carmine's connection spec."
  []
  {:pool {} :spec {:host (env "DURATOM_TEST_REDIS_HOST") :port (Long/parseLong (env "DURATOM_TEST_REDIS_PORT"))
                   :password (env "DURATOM_TEST_REDIS_PASSWORD") :db 0 :timeout-ms 3000}})

(defn- cli
  "Runs redis-cli with `args` against the test server; returns its raw output."
  [& args]
  (apply ts/sh! "redis-cli" "--no-auth-warning" "-h" (env "DURATOM_TEST_REDIS_HOST") "-p" (env "DURATOM_TEST_REDIS_PORT")
         "-a" (env "DURATOM_TEST_REDIS_PASSWORD") args))

(defn- server! [action]
  (ts/sh! script action (env "DURATOM_TEST_REDIS_DIR")))

(def backend
  {:name "redis-db"
   :new-location (fn [] (str "duratom:test:" (ts/unique-name "k")))
   :open (fn [k init rw] (d/redis-atom (conn) k nil init rw))
   :open-agent (fn [k init rw] (d/duragent :redis-db :db-config (conn) :key-name k :init init :rw rw))
   :kw-args (fn [k] [:redis-db :db-config (conn) :key-name k])
   :default-rw d/default-redis-rw
   :child-open-code (fn [k] (str "(duratom.core/redis-atom " (pr-str (conn)) " " (pr-str k) " nil nil {:shared? true})"))})

(deftest redis-behaviour
  (behaviour/run-all backend))

(deftest a-non-map-rw-is-refused-before-connecting
  ;; port 1: nothing listens; the :rw check must come first, as for file-atom
  (doseq [rw ["sync" :sync [:commit-mode :sync]]]
    (is (thrown-with-msg? IllegalArgumentException #":rw must be a map or nil"
                          (d/redis-atom "redis://127.0.0.1:1" "k" nil nil rw))
        (pr-str rw))))

(deftest redis-shared-mode
  (shared/run-all backend))

(deftest redis-stopped-and-restarted
  ;; Stopping the real server breaks every call; starting it again (same
  ;; port, same data) must heal the duratom without reopening it.
  (behaviour/error-handler-and-recommit backend (fn [_] (server! "stop")) (fn [_] (server! "start"))))

(deftest redis-duragent
  (duragent/run-all backend (fn [_] (server! "stop")) (fn [_] (server! "start"))))

(deftest keys-as-the-original-wrote-them
  ;; The original's default :rw wrote pr-str'd EDN through carmine, which
  ;; stores a String as its plain bytes.
  (let [k (str "duratom:test:" (ts/unique-name "orig"))]
    (cli "SET" k "{:a #sorted/map {:b 1}, :q #queue [1 2], :s \"caf\u00e9 \uD83D\uDE00\"}")
    (let [a (d/redis-atom (conn) k nil :unused {:commit-mode :sync})]
      (is (= {:a {:b 1} :q [1 2] :s "caf\u00e9 \uD83D\uDE00"} @a))
      (is (sorted? (:a @a)))
      (is (instance? clojure.lang.PersistentQueue (:q @a)))
      (swap! a assoc :n 1)
      (let [stored (str/trim-newline (cli "--raw" "GET" k))]
        (is (= @a (edn/read-string readers/default stored)) "plain EDN with the original's tags, nothing else")
        (is (str/starts-with? stored "{")))
      (is (= "string" (str/trim (cli "TYPE" k))))
      (d/destroy a)
      (is (= "0" (str/trim (cli "EXISTS" k))) "destroy deletes the key"))))

(deftest every-conn-spec-form-and-arity
  (let [k (str "duratom:test:" (ts/unique-name "forms"))
        {:keys [host port password]} (:spec (conn))
        a (d/duratom :redis-db :db-config (conn) :key-name k :init {:x 1} :rw (assoc d/default-redis-rw :commit-mode :sync))]
    (swap! a update :x inc)
    (doseq [form [(:spec (conn))
                  {:spec {:uri (str "redis://:" password "@" host ":" port "/0")}}
                  (str "redis://:" password "@" host ":" port)
                  (str "redis://default:" password "@" host ":" port "/0")
                  {:pool {} :spec {:host host :port (str port) :username "default" :password password}}]]
      (is (= {:x 2} @(d/redis-atom form k)) (pr-str (dissoc (if (map? form) form {}) :password))))
    (is (= :other @(d/redis-atom (conn) (str k ":2") nil :other)))
    (is (= :other @(d/redis-atom (conn) (str k ":2") nil :ignored d/default-redis-rw)))
    (testing "another database number is another key space"
      (let [b (d/redis-atom (assoc-in (conn) [:spec :db] 3) k nil :db3 {:commit-mode :sync})]
        (is (= :db3 @b))
        (d/destroy b)))
    (d/destroy a)
    (d/destroy (d/redis-atom (conn) (str k ":2")))
    (testing "binary :rw (nippy) round-trips"
      (let [rw {:read nippy/thaw :write nippy/freeze :commit-mode :sync}
            b (d/redis-atom (conn) k nil {:bytes (byte-array [0 1 -1]) :n 1} rw)]
        (swap! b update :n inc)
        (is (= 2 (:n @(d/redis-atom (conn) k nil nil rw))))
        (d/destroy b)))
    (testing "bad input is a clear error that never shows the password"
      (doseq [[bad re] [[{:spec {:host host :port port :password "wrong-pw-123"}} #"(?i)auth|WRONGPASS"]
                        [{:spec {:host "127.0.0.1" :port 1 :timeout-ms 500}} #"cannot connect to 127\.0\.0\.1:1/0"]
                        ["http://x:wrong-pw-123@h/0" #"redis://"]
                        ["rediss://:wrong-pw-123@h/0#insecure" #"fragment"]
                        [{:spec {:host host :password "wrong-pw-123" :ssl-fn (fn [m] (:socket m))}} #":ssl-fn must be :default"]
                        [{:spec {:host host :password "wrong-pw-123" :tls-ca-cert-file "/x.pem"}} #"not TLS"]
                        [{:spec {:host host :ssl-fn :default :tls-ca-cert-file 7}} #":tls-ca-cert-file must be"]
                        [{:spec {:port 70000}} #":port"]
                        [{:spec {:host host :db "x"}} #":db"]
                        [{:spec {:timeout-ms 0}} #":timeout-ms"]
                        [42 #":db-config"]]]
        (let [e (try (d/redis-atom bad k) nil (catch Exception e e))]
          (is (some? e) (pr-str bad))
          (is (re-find re (str (ex-message e))) (str (ex-message e)))
          (is (not (str/includes? (str (ex-message e)) "wrong-pw-123")))
          (is (= :redis-db (:duratom/backend (ex-data e))))))
      (is (thrown-with-msg? clojure.lang.ExceptionInfo #":key-name" (d/redis-atom (conn) ""))))))

(defn- tls-conn
  "The test server's TLS port as carmine's connection spec (`:ssl-fn
  :default`), trusting the CA file `ca`."
  [ca]
  {:pool {} :spec {:host "127.0.0.1" :port (Long/parseLong (env "DURATOM_TEST_REDIS_TLS_PORT"))
                   :password (env "DURATOM_TEST_REDIS_PASSWORD") :ssl-fn :default
                   :tls-ca-cert-file ca :timeout-ms 3000}})

(deftest rediss-round-trips-and-survives-a-reopen
  (let [k (str "duratom:test:" (ts/unique-name "tls"))
        ca (env "DURATOM_TEST_REDIS_CA")
        uri (str "rediss://:" (env "DURATOM_TEST_REDIS_PASSWORD") "@localhost:" (env "DURATOM_TEST_REDIS_TLS_PORT") "/0")
        a (d/redis-atom {:spec {:uri uri :tls-ca-cert-file ca}} k nil {:n 0} {:commit-mode :sync})]
    (swap! a update :n inc)
    (swap! a update :n inc)
    (is (= {:n 2} @(d/redis-atom (tls-conn ca) k)) "reopened over TLS, through carmine's :ssl-fn :default")
    (is (= "{:n 2}" (str/trim-newline (cli "--raw" "GET" k))) "the same server's plain port reads what TLS wrote")
    (d/destroy a)
    (is (= "0" (str/trim (cli "EXISTS" k))))))

(deftest rediss-with-a-wrong-ca-is-refused-clearly
  (let [k (str "duratom:test:" (ts/unique-name "tls-bad"))
        other (tls-conn (env "DURATOM_TEST_REDIS_OTHER_CA"))]
    (doseq [spec [other (update other :spec dissoc :tls-ca-cert-file)]]
      (let [e (try (d/redis-atom spec k) nil (catch Exception e e))
            msg (str (ex-message e))]
        (is (some? e) (pr-str (dissoc (:spec spec) :password)))
        (is (re-find #"TLS handshake failed: the server's certificate does not chain to a trusted root" msg) msg)
        (is (not (str/includes? msg (env "DURATOM_TEST_REDIS_PASSWORD"))) msg)
        (is (= :redis-db (:duratom/backend (ex-data e))))))))

;; ------------------------------------------------- carmine's byte format

(defn- utf8 ^bytes [^String s] (.getBytes s StandardCharsets/UTF_8))

(defn- read-line-bytes
  "One reply line (without its CRLF) from `in`."
  ^String [^InputStream in]
  (let [out (ByteArrayOutputStream.)]
    (loop []
      (let [b (.read in)]
        (cond (neg? b) (throw (ex-info "redis closed the connection" {}))
              (= b 13) (do (.read in) (String. (.toByteArray out) StandardCharsets/UTF_8))
              :else (do (.write out b) (recur)))))))

(defn- resp!
  "Sends one command to the test server over the raw protocol (args: Strings
  or byte arrays, so that any bytes can be stored, which redis-cli's
  arguments cannot carry) and returns the reply: bytes for a bulk string, nil
  for none, a String for a status, a long for an integer. An error reply
  throws."
  [& args]
  (with-open [sock (Socket. ^String (env "DURATOM_TEST_REDIS_HOST") (int (Long/parseLong (env "DURATOM_TEST_REDIS_PORT"))))]
    (.setSoTimeout sock 10000)
    (let [^OutputStream out (.getOutputStream sock)
          in (BufferedInputStream. (.getInputStream sock))
          send! (fn [args]
                  (.write out (utf8 (str "*" (count args) "\r\n")))
                  (doseq [a args]
                    (let [^bytes b (if (bytes? a) a (utf8 (str a)))]
                      (.write out (utf8 (str "$" (alength b) "\r\n")))
                      (.write out b)
                      (.write out (utf8 "\r\n"))))
                  (.flush out))
          reply (fn []
                  (let [line (read-line-bytes in)
                        body (subs line 1)]
                    (case (first line)
                      \+ body
                      \: (Long/parseLong body)
                      \- (throw (ex-info (str "redis: " body) {}))
                      \$ (let [n (Long/parseLong body)]
                           (when-not (neg? n)
                             (let [b (byte-array n)]
                               (loop [off 0]
                                 (when (< off n)
                                   (let [r (.read in b off (- n off))]
                                     (when (neg? r) (throw (ex-info "redis closed the connection" {})))
                                     (recur (+ off r)))))
                               (.read in) (.read in)
                               b))))))]
      (send! ["AUTH" (env "DURATOM_TEST_REDIS_PASSWORD")])
      (reply)
      (send! args)
      (reply))))

(defn- carmine-frozen
  "What carmine stores for a Clojure value that is not a String, number,
  keyword or bytes: its two-byte marker 0x00 0x3E, then nippy's bytes."
  ^bytes [v]
  (let [frozen ^bytes (nippy/freeze v)]
    (byte-array (concat [0 0x3E] frozen))))

(defn- carmine-thaw
  "What carmine's GET gives for bytes behind its nippy marker."
  [^bytes stored]
  (nippy/thaw (Arrays/copyOfRange stored 2 (alength stored))))

(deftest identity-rw-reads-and-writes-carmines-nippy-values
  (let [rw {:read identity :write identity}
        v {:x 1 :s #{"a" "b"} :kw :k :v [1.5 nil]}]
    (testing "accepted at construction, :init stored as carmine freezes it"
      (let [k (str "duratom:test:" (ts/unique-name "carmine"))
            a (d/duratom :redis-db :db-config (conn) :key-name k :init v :rw rw)]
        (try
          (is (true? (d/flush! a 10000)))
          (let [raw (resp! "GET" k)]
            (is (= [0 0x3E] (take 2 raw)) "carmine's nippy marker")
            (is (= v (carmine-thaw raw)) "carmine reads it back"))
          (is (= v (d/backend-snapshot a) @(d/redis-atom (conn) k nil nil rw)))
          (finally (d/destroy a)))))
    (testing "a value carmine froze loads through :read identity, and our write reads back in carmine"
      (let [k (str "duratom:test:" (ts/unique-name "carmine"))]
        (is (= "OK" (resp! "SET" k (carmine-frozen v))))
        (let [a (d/redis-atom (conn) k nil :unused (assoc rw :commit-mode :sync))]
          (try
            (is (= v @a))
            (is (= (assoc v :y 2) (swap! a assoc :y 2)))
            (let [raw (resp! "GET" k)]
              (is (= [0 0x3E] (take 2 raw)))
              (is (= (assoc v :y 2) (carmine-thaw raw))))
            (finally (d/destroy a))))))
    (testing "other values as carmine stores them: a String as its bytes, bytes and nil behind markers"
      (let [k (str "duratom:test:" (ts/unique-name "carmine"))
            a (d/redis-atom (conn) k nil "text" (assoc rw :commit-mode :sync))
            raw #(vec (resp! "GET" k))]
        (try
          (is (= (vec (utf8 "text")) (raw)))
          (reset! a (byte-array [1 2 -1]))
          (is (= [0 0x3C 1 2 -1] (raw)) "carmine's binary marker")
          (is (= [1 2 -1] (vec @(d/redis-atom (conn) k nil nil rw))))
          (reset! a nil)
          (is (= [0 0x5F] (raw)) "carmine's nil marker")
          (is (nil? (d/backend-snapshot a)))
          (reset! a 42)
          (is (= 42 (carmine-thaw (byte-array (raw)))) "a number is frozen, so it reads back as a number")
          (is (= 42 @(d/redis-atom (conn) k nil nil rw)))
          (is (thrown-with-msg? clojure.lang.ExceptionInfo #"refused to write the state: .*starting with the character 0"
                                (reset! a (str (char 0) "x"))))
          (is (= 42 @a (d/backend-snapshot a)) "nothing was written")
          (finally (d/destroy a)))))))
