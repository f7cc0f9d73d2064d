(ns duratom.backend.file
  "Turns the local-file constructor's arguments into a store description for
  `duratom.storage/open` (the storage itself is rust/file/)."
  (:import (java.io File)))

(defn ->file
  "`file-path` (a String or java.io.File) as an absolute File; ex-info when it
  is neither."
  ^File [file-path]
  (cond (instance? File file-path) (.getAbsoluteFile ^File file-path)
        (and (string? file-path) (seq file-path)) (.getAbsoluteFile (File. ^String file-path))
        :else (throw (ex-info (str "duratom :local-file needs :file-path as a non-empty String or java.io.File, got "
                                   (pr-str file-path))
                              {:duratom/backend :local-file :file-path file-path}))))

(defn store-config
  "Store description for the file at `file-path`. `raw?`: the bytes are a
  custom `:rw` encoding, stored without duratom's header line. `log?`: log
  mode (change records after the base; see duratom.log)."
  ([file-path raw?] (store-config file-path raw? false))
  ([file-path raw? log?]
   (let [path (.getPath (->file file-path))]
     {:backend :local-file
      :resource path
      :native-config (cond-> {"backend" "local-file" "path" path "raw" (boolean raw?)}
                       log? (assoc "log" true))})))
