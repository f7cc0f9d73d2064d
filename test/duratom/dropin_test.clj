(ns duratom.dropin-test
  "Drop-in parity with the original library and with clojure.core/atom, on
  every backend: each test runs against file, PostgreSQL, S3, SQLite and
  Redis (the backend maps of their test namespaces)."
  (:require [clojure.string :as str]
            [clojure.test :refer [deftest is testing]]
            [duratom.agent :as agent]
            [duratom.core :as d]
            [duratom.file-test :as file-test]
            [duratom.postgres-test :as postgres-test]
            [duratom.redis-test :as redis-test]
            [duratom.s3-test :as s3-test]
            [duratom.sqlite-test :as sqlite-test])
  (:import (clojure.lang IAtom IAtom2 IDeref IMeta IObj IRef IReference)))

(def ^:private backends
  [file-test/backend postgres-test/backend s3-test/backend sqlite-test/backend redis-test/backend])

(defn- kw-duratom
  "A duratom at `loc` made by the keyword form of `duratom`, with `opts`."
  [backend loc & opts]
  (apply d/duratom (concat ((:kw-args backend) loc) opts)))

(defn- kw-duragent
  "A duragent at `loc` made by the keyword form of `duragent`, with `opts`."
  [backend loc & opts]
  (apply d/duragent (concat ((:kw-args backend) loc) opts)))

(defn- stored
  "What storage at `loc` holds, read by a fresh duratom that stores nothing."
  [backend loc]
  (let [probe ((:open backend) loc nil (assoc (:default-rw backend) :commit-mode :sync))]
    (d/backend-snapshot probe)))

(defn- destroy-quietly [x]
  (try (d/destroy x) (catch Exception _ nil)))

;; ------------------------------------------------------------ duragent

(deftest duragent-persists-metadata-only-changes
  (doseq [backend backends]
    (testing (:name backend)
      (let [loc ((:new-location backend))
            ag (kw-duragent backend loc :init {:n 1})]
        (try
          (is (true? (d/flush! ag 60000)))
          (let [commits (:commits (d/stats ag))]
            (send-off ag #(with-meta % {:a 1}))
            (is (await-for 60000 ag))
            (is (= {:a 1} (meta @ag)))
            (is (= {:a 1} (meta (d/backend-snapshot ag))) "backend-snapshot shows the new metadata")
            (is (= (inc commits) (:commits (d/stats ag))) "the change was one more commit")
            (is (false? (:pending? (d/stats ag))))
            (let [back (stored backend loc)]
              (is (= {:n 1} back))
              (is (= {:a 1} (meta back)) "storage holds the new metadata")))
          (testing "an action returning its state unchanged commits nothing"
            (let [commits (:commits (d/stats ag))]
              (send ag identity)
              (is (await-for 60000 ag))
              (is (= commits (:commits (d/stats ag))))))
          (finally (destroy-quietly ag)))))))

(deftest duragent-after-destroy-fails-with-released-and-changes-nothing
  (doseq [backend backends]
    (testing (:name backend)
      (let [loc ((:new-location backend))
            errors (atom [])
            ag (kw-duragent backend loc :init {:n 1}
                            :rw (assoc (:default-rw backend)
                                       :error-handler (fn [a e] (swap! errors conj [a e]))))]
        (d/destroy ag)
        (is (nil? (stored backend loc)) "destroy removed what was stored")
        ;; another writer puts a value there: the destroyed agent must leave it alone
        (let [other ((:open backend) loc {:other true} (assoc (:default-rw backend) :commit-mode :sync))]
          (try
            (send ag update :n inc)
            (send-off ag assoc :x 1)
            (is (await-for 60000 ag))
            (is (= {:n 1} @ag) "the state did not change")
            (is (<= 2 (count @errors)) "each action went to the error handler")
            (doseq [[a e] @errors]
              (is (identical? ag a))
              (is (instance? IllegalStateException e))
              (is (= "duratom/duragent has been released!" (.getMessage ^Throwable e))))
            (is (= agent/released-message "duratom/duragent has been released!"))
            (is (= {:other true} (stored backend loc)) "storage did not change")
            (is (nil? (d/backend-snapshot ag)))
            (finally (d/destroy other))))))))

;; ------------------------------------------------------------ default :rw

(deftest default-rw-maps-carry-the-originals-read-from-and-commit-mode
  (doseq [[nm rw] [["default-file-rw" d/default-file-rw] ["default-postgres-rw" d/default-postgres-rw]
                   ["default-s3-rw" d/default-s3-rw] ["default-sqlite-rw" d/default-sqlite-rw]
                   ["default-redis-rw" d/default-redis-rw]]]
    (is (= :duratom.core/memory (:read-from rw)) nm)
    (is (= :duratom.core/async (:commit-mode rw)) nm))
  (doseq [backend backends]
    (testing (:name backend)
      (doseq [[rw mode] [[(:default-rw backend) :async]
                         [(assoc (:default-rw backend) :commit-mode :sync) :sync]
                         [(merge (:default-rw backend) {:read-from :duratom.core/storage}) :async]]]
        (let [loc ((:new-location backend))
              dura ((:open backend) loc {:v 1} rw)]
          (try
            (is (= mode (:commit-mode (d/stats dura))) (pr-str (dissoc rw :read :write)))
            (is (= {:v 2} (swap! dura update :v inc)))
            (is (true? (d/flush! dura 60000)))
            (is (= {:v 2} @dura (stored backend loc)))
            (finally (d/destroy dura))))))))

;; ------------------------------------------------------ compare-and-set!

(deftest compare-and-set-validates-the-new-value-before-comparing
  (doseq [backend backends
          rw [(:default-rw backend) (assoc (:default-rw backend) :commit-mode :sync) {:shared? true}]]
    (testing (str (:name backend) " " (pr-str (select-keys rw [:commit-mode :shared?])))
      (let [loc ((:new-location backend))
            dura ((:open backend) loc 1 rw)
            a (atom 1)]
        (try
          (doseq [r [a dura]]
            (set-validator! r pos?))
          (doseq [r [a dura]]
            (is (thrown-with-msg? IllegalStateException #"^Invalid reference state$" (compare-and-set! r 99 -1))
                "a stale compare with a rejected value throws")
            (is (thrown-with-msg? IllegalStateException #"^Invalid reference state$" (compare-and-set! r @r -1))
                "a current compare with a rejected value throws")
            (is (false? (compare-and-set! r 99 5)) "an accepted value with a stale compare is false")
            (is (= 1 @r)))
          (is (true? (d/flush! dura 60000)))
          (is (= 1 (stored backend loc)) "nothing was written")
          (finally (d/destroy dura)))))))

;; ------------------------------------------------ :meta and :validator

(deftest constructor-meta-and-validator-work-as-in-atom
  (doseq [backend backends]
    (testing (str (:name backend) " duratom")
      (let [loc ((:new-location backend))
            dura (kw-duratom backend loc :init 1 :meta {:m 1} :validator pos?)]
        (try
          (is (= {:m 1} (meta dura)) ":meta is the reference's metadata")
          (is (= 1 @dura) "the metadata is not the state's")
          (is (nil? (meta @dura)))
          (is (identical? pos? (get-validator dura)))
          (is (thrown-with-msg? IllegalStateException #"^Invalid reference state$" (swap! dura - 5)))
          (is (= 2 (swap! dura inc)))
          (is (true? (d/flush! dura 60000)))
          (is (= 2 (stored backend loc)))
          (finally (d/destroy dura))))
      (testing ": an :init the validator rejects throws, nothing is written"
        (let [loc ((:new-location backend))
              a-err (try (atom -1 :validator pos?) nil (catch Exception e e))
              d-err (try (kw-duratom backend loc :init -1 :validator pos?) nil (catch Exception e e))]
          (is (= [IllegalStateException "Invalid reference state"]
                 [(class a-err) (ex-message a-err)]
                 [(class d-err) (ex-message d-err)]))
          (is (nil? (stored backend loc)))))
      (testing ": a stored value the validator rejects throws, storage keeps it"
        (let [loc ((:new-location backend))
              writer ((:open backend) loc -5 (assoc (:default-rw backend) :commit-mode :sync))]
          (try
            (is (thrown-with-msg? IllegalStateException #"^Invalid reference state$"
                                  (kw-duratom backend loc :init 1 :validator pos?)))
            (is (= -5 (stored backend loc)))
            (finally (d/destroy writer)))))
      (testing ": in :rw, for the positional constructors"
        (let [loc ((:new-location backend))
              dura ((:open backend) loc 3 (assoc (:default-rw backend) :validator odd? :meta {:p 1}))]
          (try
            (is (= {:p 1} (meta dura)))
            (is (thrown? IllegalStateException (reset! dura 4)))
            (finally (d/destroy dura))))))
    (testing (str (:name backend) " duragent")
      (let [loc ((:new-location backend))
            errors (atom [])
            ag (kw-duragent backend loc :init 1 :meta {:m 1} :validator pos?
                            :rw (assoc (:default-rw backend) :error-handler (fn [_ e] (swap! errors conj e))))]
        (try
          (is (= {:m 1} (meta ag)))
          (send ag - 5)
          (is (await-for 60000 ag))
          (is (= 1 @ag) "a rejected state is not taken")
          (is (= [[IllegalStateException "Invalid reference state"]]
                 (map (juxt class ex-message) @errors)))
          (is (= 1 (d/backend-snapshot ag)) "nor stored")
          (finally (destroy-quietly ag))))
      (let [loc ((:new-location backend))]
        (is (thrown-with-msg? IllegalStateException #"^Invalid reference state$"
                              (kw-duragent backend loc :init -1 :validator pos?)))
        (is (nil? (stored backend loc)) "a rejected :init is not written")))))

