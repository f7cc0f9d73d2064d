(ns duratom.agent
  "duragent: a `clojure.lang.Agent` whose every state is persisted, as in the
  original library (0.5).

  The agent is an ordinary agent (`send`, `send-off`, `await`, validators,
  watches all work) with `:error-mode :continue` and a watch that, on the
  agent's own thread, writes each new state durably before the agent runs its
  next action. So the states reach storage one by one, in order, and when
  `await` returns every state sent before it is stored (or its failure went
  to the error handler).

  `duratom.core/duragent` builds one over a synchronous duratom (`store`
  here), which does the storage work; this namespace knows that store only
  through the fns in its `ops` map, so it stays independent of the backends."
  (:import (clojure.lang Agent)
           (java.util Collections Map WeakHashMap)
           (java.util.concurrent.atomic AtomicBoolean)))

(set! *warn-on-reflection* true)

;; Agent -> ops, for duratom.core's IDurable, flush! and stats. A registry
;; rather than the agent's metadata (where the original kept its fns), so that
;; a user's reset-meta! cannot unplug them; weak, so that agents nobody holds
;; are collected.
(defonce ^:private ^Map registry (Collections/synchronizedMap (WeakHashMap.)))

(defn ops-of
  "The ops map `duragent` registered for `ag`, or nil when `ag` is not a duragent."
  [ag]
  (.get registry ag))

(defn- ops-of!
  "The ops map of `ag`; IllegalArgumentException when `ag` is not a duragent."
  [ag]
  (or (ops-of ag)
      (throw (IllegalArgumentException. "duratom: this agent is not a duragent (made by duratom.core/duragent)"))))

(defn- commit-error
  "Wraps a persistence failure, so that the error handler can tell it from an
  error of the agent's own actions."
  [^Throwable e]
  (ex-info (str "duratom: commit error: " (.getMessage e)) {:type ::commit-error} e))

(defn- commit-error? [e]
  (= ::commit-error (:type (ex-data e))))

(defn- warn [& parts]
  (binding [*out* *err*]
    (println (apply str "duratom: duragent: " parts))))

(def released-message
  "The message of the IllegalStateException a destroyed duragent's actions
  fail with: the original's, which code compares."
  "duratom/duragent has been released!")

(defn duragent
  "An agent whose state starts at `value` (what storage holds, or the `:init`
  just persisted) and whose every later state is persisted through `ops`:
  - `:commit!`   (fn [v]) durably stores `v`; throws when it cannot;
  - `:durable`   (fn []) the state last stored;
  - `:released?` (fn []) true once destroyed;
  - `:destroy!`, `:snapshot`, `:stats`: what duratom.core's fns of the same
    purpose do for the store;
  - `:describe`  a string naming the backend and resource, for messages.

  `:error-handler` (of the last argument), as in the original: called `(handler agent e)` when an
  action throws, and `(handler agent e recommit)` when persisting a state
  throws `e`; `(recommit)` retries storing the agent's current state at once
  and throws if that fails. Exceptions the handler throws are swallowed (as
  an agent does). Without a handler, a persistence failure is written to
  *err* when failures start and when they end, and `flush!` throws it until
  the current state is stored. `meta`: the agent's metadata. `validator`:
  as an agent's, checking every new state.

  Once `:released?` says true, every action fails as in the original: the
  agent's validator throws IllegalStateException `released-message`, which
  the error handler receives, and neither the state nor storage changes.
  Every new state is committed, including one that differs from the last
  only in its metadata; an action that returns its state unchanged
  (identical) commits nothing."
  [value {:keys [released? describe] :as ops} {:keys [error-handler meta validator]}]
  (let [failing (AtomicBoolean. false)
        commit! (fn [v]
                  ((:commit! ops) v)
                  (when (.getAndSet failing false)
                    (warn describe ": persisting works again")))
        handler (fn [a e]
                  (cond
                    (and error-handler (commit-error? e))
                    (error-handler a (ex-cause e) #(commit! @a))

                    error-handler
                    (error-handler a e)

                    (and (commit-error? e) (not (.getAndSet failing true)))
                    (warn describe ": persisting a state failed (later states are still tried; "
                          "flush! throws until one is stored): " (.getMessage ^Throwable (ex-cause e)))))
        ;; The validator runs before the agent takes a new state: the only
        ;; place an action can still be refused (the original's place too).
        guard (fn [state]
                (when (released?) (throw (IllegalStateException. ^String released-message)))
                (if validator (validator state) true))
        ag (agent value :error-mode :continue :error-handler handler :validator guard :meta meta)]
    (add-watch ag ::persist
               (fn [_ _ old new]
                 ;; identity, not equality: states equal but for their
                 ;; metadata are different states to store
                 (when-not (identical? old new)
                   ;; a user's set-validator! replaces the check above
                   (when (released?) (throw (IllegalStateException. ^String released-message)))
                   (try (commit! new)
                        (catch Exception e (throw (commit-error e)))))))
    (.put registry ag (assoc ops :commit! commit!))
    ag))

(defn flush!
  "Waits until every action sent to `ag` before the call has run and the
  agent's state then is stored: true; false when `timeout-ms` (nil: no
  limit) passes first. When that state is not stored (its commit failed), it
  is written once more, and the error is thrown if that fails too. Must not be
  called from inside an agent action (it would wait for itself)."
  [^Agent ag timeout-ms]
  (let [{:keys [commit! durable released? describe]} (ops-of! ag)]
    (when *agent*
      (throw (IllegalStateException. "duratom: flush! cannot be called inside an agent action")))
    (if (released?)
      true
      (let [result (promise)]
        (send-off ag (fn [state]
                       (deliver result
                                (try (let [stored (durable)]
                                       (when-not (identical? state stored)
                                         (commit! state))
                                       true)
                                     (catch Throwable e e)))
                       state))
        (let [r (if timeout-ms (deref result timeout-ms ::timeout) @result)]
          (cond
            (= ::timeout r) false
            (instance? Throwable r)
            (throw (ex-info (str "duratom: " describe ": the agent's state cannot be written: "
                                 (.getMessage ^Throwable r))
                            (merge {:duratom/op :flush} (ex-data r))
                            r))
            :else true))))))

(defn stats
  "The store's figures (see duratom.core/stats), with `:pending?` true when
  the agent's state is not the one stored (its commit failed, or is under
  way), and `:queued`, the number of actions queued (the one running
  included)."
  [^Agent ag]
  (let [{:keys [stats durable]} (ops-of! ag)
        queued (.getQueueCount ag)
        state @ag
        stored (durable)]
    (assoc (stats)
           :queued queued
           :pending? (not (identical? state stored)))))
