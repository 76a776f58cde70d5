{
  "targets": [
    {
      "target_name": "semicap",
      "type": "none",
      "actions": [
        {
          "action_name": "cmake-js",
          "inputs": ["CMakeLists.txt"],
          "outputs": ["build/Release/semicap.node"],
          "action": ["node", "scripts/build-native.cjs"]
        }
      ]
    }
  ]
}
