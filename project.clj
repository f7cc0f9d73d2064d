(defproject duratom "0.1.0-SNAPSHOT"
  :description "A durable atom for Clojure: a drop-in replacement for the duratom library whose storage engine is a native Rust library."
  ;; The pom's <url>, <scm> and <licenses> (Clojars requires a licence). The
  ;; repository address is where this repository is to be published; the
  ;; SCM tag is the commit `lein deploy` runs at (Leiningen reads it from git).
  :url "https://github.com/duratom-native/duratom"
  :scm {:name "git" :url "https://github.com/duratom-native/duratom"
        :connection "scm:git:https://github.com/duratom-native/duratom.git"}
  :license {:name "Eclipse Public License 1.0" :url "https://www.eclipse.org/legal/epl-v10.html"
            :distribution :repo}
  :pom-addition ([:developers [:developer [:name "The duratom authors"]]])
  ;; Debian installs its Clojure jars as a Maven repository; with this line the
  ;; build works offline. Where Maven Central is reachable it is harmless.
  :repositories [["debian" {:url "file:///usr/share/maven-repo" :snapshots false :checksum :ignore}]]
  :dependencies [[org.clojure/clojure "1.11.1"]]
  :source-paths ["clojure"]
  :java-source-paths ["java"]
  :javac-options ["--release" "11"]
  :test-paths ["test"]
  ;; Leiningen's own output (classes, the jar) in a folder of its own: `lein
  ;; jar` and `lein test` clean :target-path first, and cargo's builds in
  ;; target/ (several minutes each) must survive that.
  :target-path "target/jvm"
  ;; `scripts/build-native` puts the library in native-resources/ as
  ;; duratom/native/<platform>/libduratom.so, so `lein jar` carries it.
  :resource-paths ["native-resources"]
  ;; tools.logging only for the test that async failures are logged through it
  ;; when present (duratom resolves it at run time and needs no logging library).
  :profiles {:dev {:dependencies [[com.taoensso/nippy "3.1.3" :exclusions [org.clojure/clojure]]
                                  [org.clojure/tools.logging "1.2.4" :exclusions [org.clojure/clojure]]
                                  ;; Debian's libtest-check-clojure (scripts/setup installs it)
                                  [org.clojure/test.check "1.1.0" :exclusions [org.clojure/clojure]]
                                  ;; Debian's libxerial-sqlite-jdbc-java: an application's own SQLite
                                  ;; copy in the same JVM as duratom's (sqlite-test)
                                  [org.xerial/sqlite-jdbc "3.40.1.0"]]}
             :demo {:source-paths ["demo"]}
             :bench {:source-paths ["bench"] :jvm-opts ["-Xms2g" "-Xmx2g"]}}
  :test-selectors {:default (complement :bench)
                   :bench :bench})
