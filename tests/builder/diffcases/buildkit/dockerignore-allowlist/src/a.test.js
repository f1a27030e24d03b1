src/a.test.js
