(ns duratom.readers
  "EDN tags for what plain EDN loses: sorted maps and sets, persistent queues,
  collections carrying metadata, java.time values, and records.

  `duratom.edn/encode` writes these tags; `default` reads them back with the
  same types. Files written by the original duratom library use the same tags
  (it wrote metadata as `#iobj`, which is read as well). The java.time tags
  are those of the time-literals library, so files interoperate with projects
  that use those literals."
  (:import (clojure.lang IPersistentMap IRecord PersistentQueue RT)
           (java.lang.reflect Method Modifier)
           (java.time DayOfWeek Duration Instant LocalDate LocalDateTime LocalTime Month MonthDay
                      OffsetDateTime OffsetTime Period Year YearMonth ZoneId ZonedDateTime)))

(set! *warn-on-reflection* true)

(defn- tuple->iobj
  "Reads `[x meta-map]` back into `x` carrying `meta-map`."
  [[x meta-map]]
  (with-meta x meta-map))

(def sorted-readers
  "Readers for `#sorted/map {..}` and `#sorted/set #{..}` (natural ordering)."
  {'sorted/map (fn [m] (into (sorted-map) m))
   'sorted/set (fn [s] (into (sorted-set) s))})

(def queue-reader
  "Reader for `#queue [..]`, giving a `clojure.lang.PersistentQueue`."
  {'queue (fn [v] (into PersistentQueue/EMPTY v))})

(def meta-reader
  "Reader for `#duratom/iobj [x meta-map]` (and the original library's `#iobj`)."
  {'duratom/iobj tuple->iobj
   'iobj tuple->iobj})

(defmacro ^:private time-reader
  "A reader fn for tag `tag` that parses a String with `(parse s)`."
  [tag parse]
  `(fn [s#]
     (when-not (string? s#)
       (throw (IllegalArgumentException. (str "#" '~tag " expects a String, got " (pr-str s#)))))
     (~parse ^String s#)))

(def time-readers
  "Readers for the java.time tags of the time-literals library
  (`#time/instant \"2024-01-01T00:00:00Z\"` and friends)."
  {'time/instant (time-reader time/instant Instant/parse)
   'time/date (time-reader time/date LocalDate/parse)
   'time/date-time (time-reader time/date-time LocalDateTime/parse)
   'time/time (time-reader time/time LocalTime/parse)
   'time/offset-date-time (time-reader time/offset-date-time OffsetDateTime/parse)
   'time/offset-time (time-reader time/offset-time OffsetTime/parse)
   'time/zoned-date-time (time-reader time/zoned-date-time ZonedDateTime/parse)
   'time/duration (time-reader time/duration Duration/parse)
   'time/period (time-reader time/period Period/parse)
   'time/zone (time-reader time/zone ZoneId/of)
   'time/year (time-reader time/year Year/parse)
   'time/year-month (time-reader time/year-month YearMonth/parse)
   'time/month-day (time-reader time/month-day MonthDay/parse)
   'time/month (time-reader time/month Month/valueOf)
   'time/day-of-week (time-reader time/day-of-week DayOfWeek/valueOf)})

(defn- record-constructor
  "The static `create(IPersistentMap)` of the record class named `class-name`.
  Loads the class without initialising it, and only a class implementing
  clojure.lang.IRecord gets further: nothing else is ever constructed from a
  stored tag."
  ^Method [^String class-name]
  (let [^Class cls (try (Class/forName class-name false (RT/baseLoader))
                 (catch ClassNotFoundException _
                   (throw (ex-info (str "cannot read the record #" class-name ": class " class-name
                                        " cannot be loaded (require the namespace that defines it"
                                        " before constructing the duratom)")
                                   {:duratom/record-class class-name}))))]
    (when-not (.isAssignableFrom IRecord cls)
      (throw (ex-info (str "cannot read #" class-name ": class " class-name
                           " is not a record (clojure.lang.IRecord), and nothing else is constructed from a tag")
                      {:duratom/record-class class-name})))
    (let [^Method m (try (.getMethod cls "create" (into-array Class [IPersistentMap]))
                 (catch NoSuchMethodException _ nil))]
      (when-not (and m (Modifier/isStatic (.getModifiers m)) (.isAssignableFrom cls (.getReturnType m)))
        (throw (ex-info (str "cannot read the record #" class-name ": class " class-name
                             " has no static create(IPersistentMap)")
                        {:duratom/record-class class-name})))
      m)))

(defn read-record
  "The `:default` reader: reads `#my.ns.R{:a 1}` as the record `my.ns.R`
  through its static `create`, when that class is loaded and implements
  clojure.lang.IRecord; any other unknown tag is an error naming it, as
  clojure.edn's own."
  [tag value]
  (let [class-name (str tag)]
    (when-not (and (symbol? tag) (nil? (namespace tag)) (pos? (.indexOf class-name ".")))
      (throw (RuntimeException. (str "No reader function for tag " tag))))
    (when-not (map? value)
      (throw (ex-info (str "cannot read the record #" class-name ": expected a map, got " (pr-str value))
                      {:duratom/record-class class-name})))
    (.invoke (record-constructor class-name) nil (object-array [value]))))

(def default
  "The options map duratom reads EDN with: `(clojure.edn/read-string default s)`.
  Merge your own readers into `:readers` to read further tags; `:default`
  reads records."
  {:readers (merge sorted-readers queue-reader meta-reader time-readers)
   :default read-record})
