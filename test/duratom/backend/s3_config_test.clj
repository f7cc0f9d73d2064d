(ns duratom.backend.s3-config-test
  "The translation of the aws-s3 constructor's arguments into the native
  configuration rust/s3/settings.rs reads. (The storage itself is tested against a
  real server, in Rust and in the behaviour suite.)"
  (:require [clojure.string :as str]
            [clojure.test :refer [deftest is testing]]
            [duratom.backend.s3 :as s3]
            [duratom.test-support :as ts]))

(def ^:private secret "wJalrXUtnFEMI-never-printed")

(defn- native [creds & [metadata]]
  (:native-config (s3/store-config creds "my-bucket" "state/0" metadata)))

(defn- failure
  "The ex-info `f` throws, or nil."
  [f]
  (try (f) nil (catch clojure.lang.ExceptionInfo e e)))

(deftest a-map-with-a-url-endpoint
  (is (= {:backend :aws-s3
          :resource "my-bucket/state/0"
          :native-config {"backend" "aws-s3" "bucket" "my-bucket" "key" "state/0"
                          "endpoint" "http://127.0.0.1:9000" "region" "us-east-1"
                          "access-key" "AKID" "secret-key" secret "session-token" "tok"}}
         (s3/store-config {:access-key "AKID" :secret-key secret :session-token "tok"
                           :endpoint "http://127.0.0.1:9000"}
                          "my-bucket" "state/0" nil)))
  (testing "with :region beside the URL"
    (is (= "eu-central-1" (get (native {:endpoint "https://minio.example:9000" :region "eu-central-1"}) "region"))))
  (testing "a bare host name is taken as https"
    (is (= "https://s3.eu-west-1.amazonaws.com" (get (native {:endpoint "s3.eu-west-1.amazonaws.com"}) "endpoint")))))

(deftest a-region-name-as-endpoint
  (is (= {"backend" "aws-s3" "bucket" "my-bucket" "key" "state/0"
          "region" "eu-west-1" "access-key" "AKID" "secret-key" secret}
         (native {:access-key "AKID" :secret-key secret :endpoint "eu-west-1"})))
  (testing "amazonica's enum spelling"
    (is (= "us-gov-west-1" (get (native {:endpoint "US_GOV_WEST_1"}) "region")))))

(deftest nil-credentials-use-the-default-chain
  (let [c (native nil)]
    (is (not (contains? c "access-key")))
    (is (not (contains? c "secret-key")))
    (is (not (contains? c "endpoint")))
    (testing "the region comes from AWS_REGION, else AWS_DEFAULT_REGION, else us-east-1 (child JVMs with set environments)"
      (let [region-in (fn [env]
                        (str/trim (ts/child-output
                                   "(require 'duratom.backend.s3)
                                    (print (get (:native-config (duratom.backend.s3/store-config nil \"my-bucket\" \"k\" nil)) \"region\"))"
                                   :env env)))]
        (is (= "eu-north-1" (region-in {"AWS_REGION" "eu-north-1" "AWS_DEFAULT_REGION" "ap-south-1"})))
        (is (= "ap-south-1" (region-in {"AWS_REGION" nil "AWS_DEFAULT_REGION" "ap-south-1"})))
        (is (= "us-east-1" (region-in {"AWS_REGION" nil "AWS_DEFAULT_REGION" nil}))))))
  (testing "a map without keys also uses the chain, in the region it names"
    (is (= {"backend" "aws-s3" "bucket" "my-bucket" "key" "state/0" "region" "ap-southeast-2"}
           (native {:endpoint "ap-southeast-2"}))))
  (testing "a named profile"
    (is (= "ci" (get (native {:profile "ci"}) "profile")))))

(deftest a-credentials-fn-is-called-on-every-store-config
  (let [calls (atom 0)
        creds (fn [] {:access-key (str "AKID" (swap! calls inc)) :secret-key secret})]
    (is (= "AKID1" (get (native creds) "access-key")))
    (is (= "AKID2" (get (native creds) "access-key")))
    (is (= 2 @calls)))
  (testing "a fn that fails or returns no map is a clear error"
    (let [e (failure #(native (fn [] (throw (RuntimeException. "vault down")))))]
      (is (re-find #"the :credentials fn failed: vault down" (ex-message e)))
      (is (= :aws-s3 (:duratom/backend (ex-data e)))))
    (is (re-find #"must return a credentials map, it returned nil" (ex-message (failure #(native (fn [] nil))))))))

(deftest metadata-becomes-native-keys
  (is (= {"sse" "AES256" "content-type" "application/edn" "sse-kms-key-id" "arn:aws:kms:k"
          "user-metadata" [["Team" "a"] ["owner" "me"]]}
         (select-keys (native nil {:server-side-encryption "AES256"
                                   :content-type "application/edn"
                                   :sse-kms-key-id "arn:aws:kms:k"
                                   :user-metadata {"owner" "me" :Team "a"}})
                      ["sse" "content-type" "sse-kms-key-id" "user-metadata"])))
  (testing "no metadata, no keys; :content-length (the original passed it) is computed, not sent"
    (is (= #{"backend" "bucket" "key" "region"} (set (keys (native nil {:content-length 12})))))
    (is (= #{"backend" "bucket" "key" "region"} (set (keys (native nil {:user-metadata {}})))))))

(deftest bad-input-is-a-clear-ex-info-without-the-secret
  (doseq [[what f re]
          [["bucket nil" #(s3/store-config nil nil "k" nil) #":bucket must be a non-empty String, got nil"]
           ["key blank" #(s3/store-config nil "b" "" nil) #":key must be a non-empty String"]
           ["credentials not a map" #(native "AKID:secret") #":credentials must be a map"]
           ["no secret key" #(native {:access-key "AKID"}) #":access-key but no :secret-key"]
           ["no access key" #(native {:secret-key secret}) #":secret-key but no :access-key"]
           ["secret key not a string" #(native {:access-key "AKID" :secret-key 42})
            #":secret-key in :credentials must be a non-empty String, got java.lang.Long"]
           ["endpoint garbage" #(native {:access-key "AKID" :secret-key secret :endpoint "not an endpoint!"})
            #":endpoint in :credentials must be a region name"]
           ["metadata not a map" #(native nil [:server-side-encryption]) #":metadata must be a map"]
           ["unknown metadata" #(native nil {:cache-controll "x"}) #"unknown :metadata key :cache-controll"]
           ["metadata name with =" #(native nil {:user-metadata {"a=b" "c"}}) #"user metadata name \"a=b\""]
           ["metadata value with newline" #(native nil {:user-metadata {"a" "b\nc"}})
            #"user metadata \"a\" must have a printable US-ASCII value"]]]
    (testing what
      (let [e (failure f)]
        (is (some? e) (str what " was accepted"))
        (when e
          (is (re-find re (ex-message e)))
          (is (re-find #"^duratom :aws-s3: " (ex-message e)))
          (is (= :aws-s3 (:duratom/backend (ex-data e))))
          (is (not (.contains (pr-str (ex-message e) (ex-data e)) secret))))))))
