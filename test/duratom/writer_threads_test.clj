(ns duratom.writer-threads-test
  "Asynchronous writers run on a bounded set of threads, and a writer thread
  that cannot be started is started later: checked in a child JVM whose
  process count a pids cgroup limits, as a container's does."
  (:require [clojure.edn :as edn]
            [clojure.java.io :as io]
            [clojure.string :as str]
            [clojure.test :refer [deftest is testing]]
            [duratom.test-support :as ts])
  (:import (java.io File)
           (java.nio.file Files)
           (java.nio.file.attribute FileAttribute)
           (java.util.concurrent TimeUnit)))

(def ^:private pids-root (io/file "/sys/fs/cgroup/pids"))

(defn- new-cgroup
  "A fresh pids cgroup (cgroup v1, as root); throws saying what is missing."
  ^File []
  (when-not (.isDirectory pids-root)
    (throw (ex-info (str "this test needs the cgroup v1 pids controller at " pids-root
                         " (and root) to limit a child JVM's threads as a container does")
                    {:missing (str pids-root)})))
  (let [cg (io/file pids-root (ts/unique-name "duratom-test"))]
    (when-not (.mkdir cg)
      (throw (ex-info (str "cannot create the cgroup " cg " (this test runs as root)") {:missing (str cg)})))
    cg))

(def ^:private duratoms 10000)

(defn- child-code [^File dir ^File cg]
  (str "(require 'duratom.core)"
       "(let [cg \"" cg "\""
       "      current #(Long/parseLong (clojure.string/trim (slurp (str cg \"/pids.current\"))))"
       "      set-max! #(spit (str cg \"/pids.max\") (str %))"
       "      ds (vec (for [i (range " duratoms ")] (duratom.core/file-atom (str \"" dir "/\" i \".edn\") nil 0)))"
       "      base (current)]"
       ;; from here on no thread more can start in this process
       "  (set-max! base)"
       "  (run! #(swap! % inc) ds)"
       "  (println \"while no thread can start, flush! gives\" (pr-str (duratom.core/flush! (peek ds) 1500)))"
       "  (set-max! (+ base 3))"
       "  (println \"landed\" (count (filter #(true? (duratom.core/flush! % 120000)) ds)))"
       "  (println \"writer-threads\" (count (filter #(.startsWith (.getName ^Thread %) \"duratom-writer-\")"
       "                                        (keys (Thread/getAllStackTraces)))))"
       "  (flush))")) ; daemon threads do not hold the exit

(deftest ten-thousand-async-duratoms-land-in-a-500-process-container
  (let [cg (new-cgroup)
        ;; on tmpfs where there is one: the test is about threads, and
        ;; 10,000 durable creations on a disk only make it slow
        shm (io/file "/dev/shm")
        dir (if (.isDirectory shm)
              (.toFile (Files/createTempDirectory (.toPath shm) "duratom-test-" (make-array FileAttribute 0)))
              (ts/temp-dir))]
    (try
      (spit (io/file cg "pids.max") "500")
      (let [java (str (System/getProperty "java.home") "/bin/java")
            cmd ["sh" "-c" (str "echo $$ > " cg "/cgroup.procs && exec \"$0\" \"$@\"")
                 java "-XX:+UseSerialGC" "-XX:-UseDynamicNumberOfCompilerThreads"
                 "-cp" (System/getProperty "java.class.path")
                 "clojure.main" "-e" (child-code dir cg)]
            p (-> (ProcessBuilder. ^java.util.List cmd)
                  (.redirectError java.lang.ProcessBuilder$Redirect/INHERIT)
                  (.start))
            out (slurp (.getInputStream p))
            _ (is (.waitFor p 10 TimeUnit/MINUTES))
            line (fn [prefix] (some #(when (str/starts-with? % prefix) (str/trim (subs % (count prefix))))
                                    (str/split-lines out)))]
        (is (zero? (.exitValue p)) (str "the child ran to the end: " out))
        (testing "a writer that cannot start waits and is retried"
          (is (= "false" (line "while no thread can start, flush! gives"))))
        (is (= (str duratoms) (line "landed")) "every flush! returned true")
        (is (<= 1 (Long/parseLong (or (line "writer-threads") "-1")) 3) "writers stay within the threads allowed")
        (is (= duratoms (count (filter #(= 1 (edn/read-string (slurp %))) (.listFiles dir))))
            "every file holds its swapped state"))
      (finally
        (run! #(.delete ^File %) (.listFiles dir))
        (.delete dir)
        (.delete cg)))))
