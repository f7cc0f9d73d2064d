(ns duratom.prep
  "The prep step of deps.edn: builds what a checkout of duratom needs before
  the Clojure CLI can put it on a class path."
  (:require [clojure.java.io :as io]
            [clojure.string :as str]))

(defn- sh!
  "Runs `cmd` in this checkout with its output on ours; throws naming the
  command when it fails."
  [& cmd]
  (let [status (-> (ProcessBuilder. ^java.util.List (vec cmd))
                   (.directory (io/file "."))
                   (.inheritIO)
                   (.start)
                   (.waitFor))]
    (when-not (zero? status)
      (throw (ex-info (str "duratom prep: `" (str/join " " cmd) "` failed (exit " status ")")
                      {:cmd cmd :exit status})))))

(defn prep
  "Builds the native library (scripts/build-native: cargo build --release)
  and compiles java/duratom/*.java into target/jvm/classes, where deps.edn's
  :paths expect them. Run by `clj -X:deps prep` in a project that depends on
  this checkout, or here as `clj -T:build prep`."
  [_]
  (sh! "scripts/build-native")
  (let [sources (->> (.listFiles (io/file "java/duratom"))
                     (filter #(.endsWith (.getName ^java.io.File %) ".java"))
                     (map str)
                     sort)]
    (apply sh! "javac" "--release" "11" "-d" "target/jvm/classes" sources)))
