src/index.js
