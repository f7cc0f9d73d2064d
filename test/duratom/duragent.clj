(ns duratom.duragent
  "The behaviour every backend's duragent must show, as one suite run against
  each. A backend is a map as in duratom.behaviour, plus `:open-agent`
  (fn [location init rw]) a duragent at `location`."
  (:require [clojure.test :refer [is testing]]
            [duratom.core :as d])
  (:import (clojure.lang Agent)))

(defn- fresh [backend init rw]
  (let [loc ((:new-location backend))]
    [((:open-agent backend) loc init rw) loc]))

(defn- destroy-quietly [ag]
  (try (d/destroy ag) (catch Exception _ nil)))

(defn persists-every-state-in-order
  "send and send-off persist every state in order; a restart loads the state;
  destroy removes it."
  [backend]
  (testing (str (:name backend) " duragent: every state persisted in order")
    (let [[ag loc] (fresh backend 0 (:default-rw backend))
          seen (atom [])
          n 40]
      (try
        (is (instance? Agent ag) "a real clojure.lang.Agent")
        (is (= 0 @ag (d/backend-snapshot ag)) ":init is persisted at construction")
        (dotimes [i n]
          ((if (even? i) send send-off)
           ag (fn [state]
                ;; the state this action starts from must already be stored
                (swap! seen conj [state (d/backend-snapshot ag)])
                (inc state))))
        (is (await-for 60000 ag))
        (is (= n @ag))
        (is (= (map (fn [i] [i i]) (range n)) @seen)
            "each action ran after the state before it was stored, in order")
        (is (= n (d/backend-snapshot ag)) "the last state is stored when await returns")
        (is (true? (d/flush! ag 10000)))
        (let [st (d/stats ag)]
          (is (= (inc n) (:commits st)) "one commit per state, :init included")
          (is (false? (:pending? st)))
          (is (= 0 (:failures st))))

        (testing "a restart loads the state"
          (let [again ((:open-agent backend) loc :not-used (:default-rw backend))]
            (is (= n @again))
            (is (= n @((:open backend) loc :not-used (:default-rw backend))) "a duratom reads what it stored")
            (send-off again * 2)
            (is (await-for 60000 again))
            (is (= (* 2 n) (d/backend-snapshot again) (d/backend-snapshot ag)))

            (testing "destroy removes what is stored; later states go to the 2-arity handler"
              (d/destroy again)
              (is (nil? (d/destroy again)) "destroy twice is harmless")
              (is (nil? (d/backend-snapshot again)))
              (let [fresh-dura ((:open backend) loc :fresh (:default-rw backend))]
                (is (= :fresh @fresh-dura) "nothing was stored any more")
                (d/destroy fresh-dura)))))
        (finally (destroy-quietly ag))))))

(defn agent-errors-go-to-the-2-arity-handler
  "An action that throws calls `(handler agent e)`; the agent goes on."
  [backend]
  (testing (str (:name backend) " duragent: errors of actions go to the 2-arity error handler")
    (let [calls (atom [])
          rw (assoc (:default-rw backend)
                    :error-handler (fn
                                     ([a e] (swap! calls conj [:agent a (ex-message e)]))
                                     ([a e _recommit] (swap! calls conj [:commit a (ex-message e)]))))
          [ag _] (fresh backend 1 rw)]
      (try
        (send ag (fn [_] (throw (ex-info "boom" {}))))
        (send-off ag inc)
        (is (await-for 60000 ag))
        (is (= [[:agent ag "boom"]] @calls))
        (is (= 2 @ag (d/backend-snapshot ag)) "the agent continues and persists")
        (finally (destroy-quietly ag))))))

(defn persistence-errors
  "`break!` makes the backend's commits fail, `mend!` undoes that. With a
  handler, its 3-arity gets the error and a working recommit; without one,
  flush! throws until the state is stored. `may-land?`: a broken commit's
  outcome is unknown (a frozen server may still apply it when it thaws)."
  [backend break! mend! may-land?]
  (testing (str (:name backend) " duragent: persistence errors go to the 3-arity handler with recommit")
    (let [calls (atom [])
          rw (assoc (:default-rw backend)
                    :error-handler (fn
                                     ([a e] (swap! calls conj [:agent a e nil]))
                                     ([a e recommit]
                                      (swap! calls conj [:commit a e recommit])
                                      (throw (Exception. "handler exceptions are swallowed")))))
          [ag loc] (fresh backend 1 rw)]
      (try
        (break! loc)
        (send-off ag inc)
        (is (await-for 120000 ag))
        (is (= 1 (count @calls)))
        (let [[kind a e recommit] (first @calls)]
          (is (= :commit kind))
          (is (identical? ag a))
          (is (instance? Exception e))
          (is (= 2 @ag) "as in the original, the agent keeps the new state")
          (mend! loc)
          (if may-land?
            (is (contains? #{1 2} (d/backend-snapshot ag)))
            (is (= 1 (d/backend-snapshot ag)) "the failed state was not stored"))
          (recommit)
          (is (= 2 (d/backend-snapshot ag)) "recommit stored the agent's current state"))
        (send-off ag inc)
        (is (await-for 60000 ag))
        (is (= 3 (d/backend-snapshot ag)) "later states are persisted again")
        (finally (destroy-quietly ag)))))
  (testing (str (:name backend) " duragent without handler: flush! throws until the state is stored")
    (let [[ag loc] (fresh backend 1 (:default-rw backend))]
      (try
        (break! loc)
        (send-off ag inc)
        (is (await-for 120000 ag))
        (is (= 2 @ag))
        (is (:pending? (d/stats ag)))
        (is (thrown-with-msg? Exception #"cannot be written" (d/flush! ag 120000)))
        (mend! loc)
        (is (true? (d/flush! ag 60000)))
        (is (= 2 (d/backend-snapshot ag)))
        (is (false? (:pending? (d/stats ag))))
        (finally (destroy-quietly ag))))))

(defn run-all
  "Every duragent behaviour above against `backend` (see persistence-errors
  for the other arguments)."
  ([backend break! mend!] (run-all backend break! mend! false))
  ([backend break! mend! may-land?]
   (persists-every-state-in-order backend)
   (agent-errors-go-to-the-2-arity-handler backend)
   (persistence-errors backend break! mend! may-land?)))
