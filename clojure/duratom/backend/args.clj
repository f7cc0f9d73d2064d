(ns duratom.backend.args
  "The argument checks the backend namespaces share. Each backend turns its
  constructor's arguments into a store description and refuses bad ones the
  same way: an ex-info that names the backend and the key, never a secret."
  (:require [clojure.string :as str]))

(set! *warn-on-reflection* true)

(defn fail
  "Throws the ex-info an unusable argument of `backend` (a constructor
  keyword such as :postgres-db) becomes: the message starts with
  `duratom :<backend>: `, the data holds `:duratom/backend` and `data`.
  `message` must not quote a password, URI or credentials map."
  ([backend message] (fail backend message {}))
  ([backend message data]
   (throw (ex-info (str "duratom " backend ": " message) (merge {:duratom/backend backend} data)))))

(defn type-name
  "The class name of `x` for messages (\"nil\" for nil), not its value."
  [x]
  (if (nil? x) "nil" (.getName (class x))))

(defn table-name
  "`table-name` as a String: a non-blank String, or a keyword's name."
  [backend table-name]
  (cond
    (keyword? table-name) (name table-name)
    (and (string? table-name) (not (str/blank? table-name))) table-name
    :else (fail backend (str ":table-name must be a non-empty String, got "
                             (if (string? table-name) "a blank String" (type-name table-name)))
                {:key :table-name})))

(defn row-id
  "`row-id` as a long: any integer that fits one."
  [backend row-id]
  (if (and (integer? row-id) (<= Long/MIN_VALUE row-id Long/MAX_VALUE))
    (long row-id)
    (fail backend (str ":row-id must be an integer, got " (pr-str row-id)) {:key :row-id})))
