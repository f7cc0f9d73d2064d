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

;; ------------------------------------------- side by side with atom

(defn- outcome
  "What `f` returned or threw, with `r` itself as :self."
  [r f]
  (try (let [v (f)] (if (identical? v r) :self v))
       (catch Throwable e
         [:threw (.getName (class e)) (.getMessage e)
          (some-> (.getCause e) class .getName)])))

(defn- print-shape
  "`pr-str` of a reference with its identity hash code taken out."
  [r]
  (str/replace (pr-str r) #"0x[0-9a-f]+" "0x?"))

(defn- script
  "Runs the same operations on `r` (an atom or a duratom) and returns what
  could be observed: [tag outcome] for each call of every IAtom, IAtom2,
  IRef, IDeref, IMeta and IReference method, and [:watch ...] entries for
  the watch calls, in the order they came."
  [r]
  (let [log (atom [])
        rec (fn [tag f] (swap! log conj [tag (outcome r f)]))
        watch (fn [k] (fn [key ref old new]
                        (swap! log conj [:watch k key (if (identical? ref r) :self ref) old new (meta new)
                                         @ref])))
        checked (fn [v] (throw (Exception. "checked")))]
    (rec :interfaces #(mapv (fn [^Class c] (instance? c r)) [IAtom IAtom2 IRef IDeref IMeta IReference]))
    (rec :meta #(meta r))
    (rec :deref #(deref r))
    (rec :get-watches-empty #(.getWatches ^IRef r))
    ;; several watches stay for the whole script: the order of their calls counts
    (doseq [k [:j :c :a :b :e]]
      (rec [:add-watch k] #(add-watch r k (watch k))))
    (rec :watch-keys-in-calling-order #(vec (keys (.getWatches ^IRef r))))
    (rec [:remove-watch :e] #(remove-watch r :e))
    (rec :watch-keys-after-removals #(vec (keys (.getWatches ^IRef r))))
    (rec :remove-absent-watch #(remove-watch r :absent))
    (rec :swap-1 #(swap! r update :n inc))
    (rec :swap-2 #(swap! r update :n + 2))
    (rec :swap-3 #(swap! r update :n + 2 3))
    (rec :swap-more #(swap! r update :n + 1 1 1 1))
    (rec :swap-vals-1 #(let [v (swap-vals! r assoc :a 1)] [v (class v)]))
    (rec :swap-vals-2 #(swap-vals! r assoc :b 2))
    (rec :swap-vals-3 #(swap-vals! r assoc :c 3 :d 4))
    (rec :swap-vals-more #(swap-vals! r assoc :e 5 :f 6 :g 7))
    (rec :reset-vals #(let [v (reset-vals! r {:n 100})] [v (class v)]))
    (rec :cas-equal-not-identical #(compare-and-set! r {:n 100} {:n 1}))
    (rec :cas-identical #(compare-and-set! r @r {:n 101}))
    (rec :reset #(reset! r {:n 7}))
    (rec :reset-to-itself #(reset! r @r))
    (rec :meta-only-change #(meta (swap! r with-meta {:z 1})))
    (rec :fn-throws #(swap! r (fn [_] (throw (ex-info "boom" {})))))
    (rec :swap-vals-fn-throws #(swap-vals! r (fn [_] (throw (ArithmeticException. "arith")))))
    (rec :deref-after #(deref r))
    (rec :get-validator-none #(get-validator r))
    (rec :set-validator-rejecting-current #(set-validator! r (fn [v] (< (:n v) 5))))
    (rec :get-validator-still-none #(get-validator r))
    (rec :set-validator-throwing-runtime #(set-validator! r (fn [_] (throw (ArithmeticException. "nope")))))
    (rec :set-validator-throwing-checked #(set-validator! r checked))
    (let [v (fn [x] (<= (:n x) 200))]
      (rec :set-validator #(set-validator! r v))
      (rec :get-validator-is-it #(identical? v (get-validator r))))
    (rec :swap-rejected #(swap! r assoc :n 500))
    (rec :swap-2-rejected #(swap! r assoc :n 500 :m 1))
    (rec :reset-rejected #(reset! r {:n 500}))
    (rec :swap-vals-rejected #(swap-vals! r assoc :n 500))
    (rec :reset-vals-rejected #(reset-vals! r {:n 500}))
    (rec :cas-stale-rejected #(compare-and-set! r :stale {:n 500}))
    (rec :cas-current-rejected #(compare-and-set! r @r {:n 500}))
    (rec :cas-stale-accepted #(compare-and-set! r :stale {:n 5}))
    (rec :validator-throwing-runtime-on-swap
         #(do (set-validator! r nil)
              (set-validator! r (fn [x] (if (= 9 (:n x)) (throw (ArithmeticException. "nine")) true)))
              (swap! r assoc :n 9)))
    (rec :validator-throwing-checked-on-swap
         #(do (set-validator! r nil)
              (set-validator! r (fn [x] (if (= 9 (:n x)) (throw (Exception. "checked nine")) true)))
              (swap! r assoc :n 9)))
    (rec :validator-returning-nil #(do (set-validator! r (constantly nil)) :unreached))
    (rec :remove-validator #(set-validator! r nil))
    (rec :deref-unchanged #(deref r))
    (rec :watch-that-throws #(do (add-watch r :bad (fn [_ _ _ _] (throw (IllegalArgumentException. "watch"))))
                                 (swap! r update :n inc)))
    (rec :state-after-watch-threw #(deref r))
    (rec :remove-bad-watch #(remove-watch r :bad))
    (rec :reset-meta #(reset-meta! r {:m 1}))
    (rec :alter-meta #(alter-meta! r assoc :k 2))
    (rec :alter-meta-more #(alter-meta! r assoc :x 1 :y 2))
    (rec :meta-after #(meta r))
    (rec :with-meta #(meta (with-meta r {:w 1})))
    (rec :print-method #(print-shape r))
    (rec :str-deref #(pr-str @r))
    @log))

(def ^:private deliberate
  "The differences from clojure.core/atom kept on purpose, as the original
  library had them: tag -> (fn [atom's outcome, duratom's outcome] ok?)."
  {;; clojure.lang.Atom is no IObj; the original's Duratom was, and with-meta
   ;; gives a duratom with that metadata sharing the rest
   :with-meta (fn [a d] (and (= "java.lang.ClassCastException" (second a)) (= {:w 1} d)))
   ;; the original printed #duratom.core.Duratom 0x.. {:status .., :val ..},
   ;; an atom prints #object[clojure.lang.Atom 0x.. {:status .., :val ..}]:
   ;; the map inside is the same
   :print-method (fn [a d]
                   (and (str/starts-with? a "#object[clojure.lang.Atom 0x? {")
                        (str/starts-with? d "#duratom.core.Duratom 0x? {")
                        (= (subs a (count "#object[clojure.lang.Atom 0x? ") (dec (count a)))
                           (subs d (count "#duratom.core.Duratom 0x? ")))))})

(defn- differences
  "The entries where the two logs differ, other than the deliberate ones."
  [atom-log dura-log]
  (let [n (max (count atom-log) (count dura-log))]
    (for [i (range n)
          :let [[ta oa :as ea] (get atom-log i)
                [td od :as ed] (get dura-log i)
                ok? (if (and (= ta td) (contains? deliberate ta))
                      ((deliberate ta) oa od)
                      (= ea ed))]
          :when (not ok?)]
      {:at i :atom ea :duratom ed})))

(deftest side-by-side-with-clojure-core-atom
  (let [atom-log (script (atom {:n 0}))]
    (is (some #(= :watch (first %)) atom-log) "the script exercises watches")
    (is (some #(and (vector? (second %)) (= :threw (first (second %)))) atom-log) "and failures")
    (doseq [backend backends
            [mode rw] [["async (default :rw)" (:default-rw backend)]
                       ["sync" (assoc (:default-rw backend) :commit-mode :sync)]
                       ["shared" (assoc (:default-rw backend) :shared? true)]]]
      (testing (str (:name backend) " " mode)
        (let [loc ((:new-location backend))
              dura ((:open backend) loc {:n 0} rw)]
          (try
            (let [dura-log (script dura)]
              (is (empty? (differences atom-log dura-log))
                  (with-out-str (doseq [d (differences atom-log dura-log)] (prn d)))))
            (is (true? (d/flush! dura 60000)))
            (is (= @dura (stored backend loc)) "and storage holds the last state")
            (is (= (meta @dura) (meta (stored backend loc))) "with its metadata")
            (finally (destroy-quietly dura))))))))
