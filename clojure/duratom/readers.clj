(ns duratom.readers
  "EDN tags for what plain EDN loses: sorted maps and sets, persistent queues,
  and collections carrying metadata.

  `duratom.edn/encode` writes these tags; `default` reads them back with the
  same types. Files written by the original duratom library use the same tags
  (it wrote metadata as `#iobj`, which is read as well)."
  (:import (clojure.lang PersistentQueue)))

(defn- tuple->iobj
  "Reads `[coll meta-map]` back into `coll` carrying `meta-map`."
  [[coll meta-map]]
  (with-meta coll meta-map))

(def sorted-readers
  "Readers for `#sorted/map {..}` and `#sorted/set #{..}` (natural ordering)."
  {'sorted/map (fn [m] (into (sorted-map) m))
   'sorted/set (fn [s] (into (sorted-set) s))})

(def queue-reader
  "Reader for `#queue [..]`, giving a `clojure.lang.PersistentQueue`."
  {'queue (fn [v] (into PersistentQueue/EMPTY v))})

(def meta-reader
  "Reader for `#duratom/iobj [coll meta-map]` (and the original library's `#iobj`)."
  {'duratom/iobj tuple->iobj
   'iobj tuple->iobj})

(def default
  "The options map duratom reads EDN with: `(clojure.edn/read-string default s)`.
  Merge your own readers into `:readers` to read further tags."
  {:readers (merge sorted-readers queue-reader meta-reader)})
