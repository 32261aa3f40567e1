{
  "targets": [
    {
      "target_name": "gatecast_aead",
      "sources": ["aead.c"],
      "cflags": ["-O2", "-Wall", "-Wextra", "-Werror", "-fstack-protector-strong"],
      "libraries": ["-ldl"]
    }
  ]
}
