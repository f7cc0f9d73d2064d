(ns duratom.demo
  "A counter that survives restarts: each run loads the count from a file,
  increments it durably and prints it."
  (:require [duratom.core :as d]))

(defn -main [& [path]]
  (let [path (or path "demo-state/counter.edn")
        counter (d/duratom :local-file
                           :file-path path
                           :init {:runs 0}
                           :rw (assoc d/default-file-rw :commit-mode :sync))]
    (println "loaded from" path ":" @counter)
    (swap! counter update :runs inc)
    (println "after this run  :" @counter "(durable: the swap! returned after fsync)")
    (println "file contents   :" (pr-str (slurp path)))))
