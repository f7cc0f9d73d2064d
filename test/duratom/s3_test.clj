(ns duratom.s3-test
  "The S3 backend against a real S3-protocol server (scripts/test starts moto)."
  (:require [clojure.string :as str]
            [clojure.test :refer [deftest is testing]]
            [duratom.backend.s3 :as s3-config]
            [duratom.behaviour :as behaviour]
            [duratom.core :as d]
            [duratom.duragent :as duragent]
            [duratom.shared :as shared]
            [duratom.storage :as storage]
            [duratom.test-support :as ts]
            [taoensso.nippy :as nippy]))

(def ^:private script "scripts/s3-server")

(defn- env [k] (ts/required-env k script))

(defn creds
  "The test server's credentials, amazonica style."
  []
  {:access-key (env "DURATOM_TEST_S3_ACCESS_KEY")
   :secret-key (env "DURATOM_TEST_S3_SECRET_KEY")
   :endpoint (env "DURATOM_TEST_S3_ENDPOINT")})

(def ^:private bucket "duratom-tests")

(defn- server-signal!
  "Sends `signal` to the S3 server process: STOP freezes it (every request
  then times out), CONT brings it back with its state."
  [signal]
  (let [pid (str/trim (slurp (str (env "DURATOM_TEST_S3_DIR") "/pid")))]
    (ts/sh! "kill" (str "-" signal) pid)))

(def backend
  {:name "aws-s3"
   :new-location (fn [] (str "state/" (ts/unique-name "k")))
   :open (fn [k init rw] (d/s3-atom (creds) bucket k nil init rw))
   :open-agent (fn [k init rw] (d/duragent :aws-s3 :credentials (creds) :bucket bucket :key k :init init :rw rw))
   :kw-args (fn [k] [:aws-s3 :credentials (creds) :bucket bucket :key k])
   :default-rw d/default-s3-rw
   :child-open-code (fn [k] (str "(duratom.core/s3-atom " (pr-str (creds)) " " (pr-str bucket) " " (pr-str k)
                                 " nil nil {:shared? true})"))})

(deftest s3-behaviour
  (behaviour/run-all backend))

(deftest s3-shared-mode
  (shared/run-all backend))

(deftest s3-server-stopped-and-back
  (behaviour/error-handler-and-recommit backend
                                        (fn [_] (server-signal! "STOP"))
                                        (fn [_] (server-signal! "CONT"))))

(deftest s3-duragent
  ;; a request the frozen server received is applied when it thaws
  (duragent/run-all backend (fn [_] (server-signal! "STOP")) (fn [_] (server-signal! "CONT")) true))

(deftest a-commit-whose-outcome-is-unknown
  ;; A synchronous swap! times out while the server is frozen, after its PUT
  ;; went out; the thawed server stores it, so the outcome was unknown.
  (let [k (str "state/" (ts/unique-name "unknown"))
        a (d/s3-atom (creds) bucket k nil {:n 1} {:commit-mode :sync})
        seen (atom [])]
    (add-watch a :w (fn [_ _ o n] (swap! seen conj [o n])))
    (server-signal! "STOP")
    (let [t0 (System/nanoTime)
          e (try (swap! a update :n inc) nil
                 (catch Exception e e)
                 (finally (server-signal! "CONT")))
          secs (/ (- (System/nanoTime) t0) 1e9)]
      (println (format "S3 frozen during a synchronous swap!: failed after %.2f s (timeout 10 s)" secs))
      (is (some? e))
      (is (re-find #"outcome unknown" (str (ex-message e))) (str e))
      (is (true? (:duratom/outcome-unknown? (ex-data e))))
      (is (< secs 15) "within the S3 bound")
      (is (= {:n 1} @a) "the swap! threw: memory holds the last known durable state"))
    ;; the thawed server handles the PUT it had received
    (let [deadline (+ (System/nanoTime) 20e9)]
      (while (and (= {:n 1} (d/backend-snapshot a)) (< (System/nanoTime) deadline))
        (Thread/yield)))
    (is (= {:n 2} (d/backend-snapshot a)) "the unanswered write landed")
    (is (= {:n 3} (swap! a update :n inc)) "the next swap! adopts the landed state and builds on it")
    (is (= {:n 3} @a (d/backend-snapshot a)) "memory equals storage")
    (is (= [[{:n 1} {:n 2}] [{:n 2} {:n 3}]] @seen) "the watches saw the landed state adopted")
    (d/destroy a)))

(deftest keyword-constructor-and-credentials
  (testing "credentials as a map, with the bucket created when missing"
    (let [b (ts/unique-name "fresh-bucket")
          dura (d/duratom :aws-s3 :credentials (creds) :bucket b :key "x/0" :init {:x 1}
                          :rw (assoc d/default-s3-rw :commit-mode :sync))]
      (swap! dura update :x inc)
      (is (= {:x 2} @(d/s3-atom (creds) b "x/0")))
      (d/destroy dura)
      (is (nil? @(d/s3-atom (creds) b "x/0")) "destroy deleted the object")))
  (testing "a rotating credentials fn is called again"
    (let [calls (atom 0)
          rotating (fn [] (swap! calls inc) (creds))
          dura (d/s3-atom rotating bucket (ts/unique-name "rot") nil 0 {:commit-mode :sync})
          before @calls]
      (dotimes [_ 3] (swap! dura inc))
      (is (< before @calls) "called for later operations, not only at construction")
      (is (= 3 (d/backend-snapshot dura)))
      (d/destroy dura)))
  (testing "nil credentials use the AWS default chain (environment variables)"
    (let [k (ts/unique-name "env")
          out (ts/child-output
               (str "(require 'duratom.core)"
                    "(let [a (duratom.core/s3-atom nil " (pr-str bucket) " " (pr-str k) " nil {:from :env} {:commit-mode :sync})]"
                    "  (println (pr-str @(duratom.core/s3-atom nil " (pr-str bucket) " " (pr-str k) "))))")
               :env {"AWS_ACCESS_KEY_ID" (env "DURATOM_TEST_S3_ACCESS_KEY")
                     "AWS_SECRET_ACCESS_KEY" (env "DURATOM_TEST_S3_SECRET_KEY")
                     "AWS_REGION" (env "DURATOM_TEST_S3_REGION")
                     "AWS_ENDPOINT_URL" (env "DURATOM_TEST_S3_ENDPOINT")
                     "AWS_ENDPOINT_URL_S3" (env "DURATOM_TEST_S3_ENDPOINT")})]
      (is (= "{:from :env}" (str/trim out)))
      (is (= {:from :env} @(d/s3-atom (creds) bucket k))))))

(deftest conditional-writes-report-conflicts
  (let [k (ts/unique-name "cond")
        desc (s3-config/store-config (creds) bucket k nil)
        a (storage/open desc)
        b (storage/open desc)
        v1 (storage/commit! a (.getBytes "1") :nothing)]
    (is (string? v1))
    (is (nil? (storage/commit! b (.getBytes "2") :nothing)) "create refused: the key exists")
    (let [v2 (storage/commit! b (.getBytes "2") v1)]
      (is (string? v2))
      (is (nil? (storage/commit! a (.getBytes "3") v1)) "a stale ETag is refused, not reported as success")
      (is (= "2" (String. ^bytes (:bytes (storage/load-stored a))))))
    (storage/delete! a)
    (storage/close! a)
    (storage/close! b)))

(deftest bad-input-is-a-clear-error
  (testing "an invalid bucket name"
    (let [e (try (d/s3-atom (creds) "Bad_Bucket" "k") nil (catch Exception e e))]
      (is (some? e))
      (is (str/includes? (ex-message e) "Bad_Bucket"))
      (is (= :aws-s3 (:duratom/backend (ex-data e))))))
  (testing "an endpoint that does not answer fails in bounded time"
    (let [port (with-open [s (java.net.ServerSocket. 0)] (.getLocalPort s))
          t0 (System/nanoTime)
          e (try (d/s3-atom (assoc (creds) :endpoint (str "http://127.0.0.1:" port)) bucket "k") nil
                 (catch Exception e e))]
      (is (some? e))
      (is (< (/ (- (System/nanoTime) t0) 1e9) 30))
      (is (not (str/includes? (ex-message e) (env "DURATOM_TEST_S3_SECRET_KEY"))))))
  (testing "an endpoint that accepts and never answers fails within :timeout-ms"
    (with-open [silent (java.net.ServerSocket. 0)] ; the kernel accepts; nobody reads
      (let [t0 (System/nanoTime)
            e (try (d/s3-atom (assoc (creds) :endpoint (str "http://127.0.0.1:" (.getLocalPort silent))
                                     :timeout-ms 1500)
                              bucket "k")
                   nil
                   (catch Exception e e))
            secs (/ (- (System/nanoTime) t0) 1e9)]
        (is (some? e))
        (is (< 1.0 secs 8.0) (str "failed after " secs " s; the default bound is 10 s")))))
  (testing ":timeout-ms that is not a positive whole number is refused, naming it"
    (doseq [bad [0 -5 1.5 "1000"]]
      (let [e (try (d/s3-atom (assoc (creds) :timeout-ms bad) bucket "k") nil (catch Exception e e))]
        (is (str/includes? (str (ex-message e)) ":timeout-ms") (pr-str bad)))))
  (testing "no credentials at all"
    (let [out (ts/child-output
               (str "(require 'duratom.core)"
                    "(try (duratom.core/s3-atom nil \"some-bucket\" \"k\")"
                    "  (catch Exception e (println \"ERROR\" (ex-message e))))")
               :env {"AWS_ACCESS_KEY_ID" nil "AWS_SECRET_ACCESS_KEY" nil "AWS_SESSION_TOKEN" nil
                     "AWS_PROFILE" nil "AWS_CONFIG_FILE" "/nonexistent" "AWS_SHARED_CREDENTIALS_FILE" "/nonexistent"
                     "AWS_EC2_METADATA_DISABLED" "true"
                     "AWS_ENDPOINT_URL" (env "DURATOM_TEST_S3_ENDPOINT")})]
      (is (str/starts-with? out "ERROR"))
      (is (re-find #"(?i)credential" out)))))

(deftest big-values-and-binary-rw
  (testing "a value of more than 20 MB round-trips"
    (let [v (ts/big-value 21)
          k (ts/unique-name "big")
          dura (d/s3-atom (creds) bucket k nil v {:commit-mode :sync})]
      (is (= v @(d/s3-atom (creds) bucket k)))
      (d/destroy dura)))
  (testing "nippy, with object metadata"
    (let [k (ts/unique-name "nippy")
          rw {:read (fn [_size in] (nippy/thaw (.readAllBytes ^java.io.InputStream in)))
              :write nippy/freeze
              :metadata {:server-side-encryption "AES256"}
              :commit-mode :sync}
          v (ts/sample-value)
          dura (d/s3-atom (creds) bucket k nil v rw)]
      (is (= v @(d/s3-atom (creds) bucket k nil nil rw)))
      (d/destroy dura))))
